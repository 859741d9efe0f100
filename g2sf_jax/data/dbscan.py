"""DBSCAN with exactly the labels of Open3D's `PointCloud.cluster_dbscan`, in NumPy over a grid of cells.

Open3D first stores every point's neighbour list. On an 800² MVTec scan (eps 6 mm, ~0.2 mm pixel pitch) that is
~2,800 neighbours for each of ~320k points: ~37 s and 8.8 GiB per scan, almost all of `prepare`. Here points are
binned into cubes of side eps/2, whose diagonal is below eps. So a cube holding ≥ min_points points makes all of
them core points of one cluster, with no distance computed. Distances are only needed for the points of sparse
cubes and to link neighbouring cubes, which on a dense scan are few: 0.3 s and 0.35 GiB for such a scan here. A
sparse cloud (few pairs within eps, e.g. a 320² scan) is clustered from all its pairs within eps instead, listed by
a k-d tree; that takes about 1-2× Open3D's time.

The labels Open3D's loop produces, and so the ones returned here:
* A point is core when at least `min_points` points (itself included) lie strictly within `eps`, with squared
  distances summed x, y, z in float64 as nanoflann does.
* A cluster is a connected set of core points, linked when within eps. Clusters are numbered in the order of their
  lowest core-point index (Open3D's outer loop visits points in index order and starts a cluster at the first
  unlabelled core point).
* A non-core point within eps of core points takes the lowest-numbered of their clusters (the first expansion to
  reach it labels it, and later ones leave it). Any other point is noise, -1.
"""
import numpy as np
from scipy import sparse, spatial
from scipy.sparse import csgraph

_CELL_MARGIN = 1e-9  # cube side eps/2·(1+margin): a pair within eps is at most 2 cubes apart on every axis, rounding
                     # of the cube coordinates included (< _MAX_CUBES per axis), and a cube's diagonal (0.87 eps)
                     # stays below eps
_MAX_CUBES = 1 << 20  # cubes per axis: beyond, the margin would not cover that rounding
_BOUND_MARGIN = 1e-9  # a bounding-box bound decides a pair only when it clears eps² by this relative margin
_SMALL_CUBE_PAIR = 256  # cube pairs with at most this many point pairs are linked in one vectorised pass
_BOUNDED_CUBE = 32  # a point is compared with the bounding box of a cube of at least this many points first
_PAIR_BUDGET = 1 << 22  # a cloud with about this many pairs within eps or fewer is clustered from those pairs
_PAIRS_PER_CUBE_POINT = 16  # pairs within eps ≈ this × Σ cube counts² (a ball of radius eps spans 12.6 cubes of a
                            # surface, 33 of a volume; halved for unordered pairs)
_PAIRS_PER_BLOCK = 1 << 21  # pairs expanded at once (a few [block, 3] float64 temporaries: ~250 MiB)
_CUBES_PER_LOOKUP = 1 << 14  # cubes whose 125 neighbours are looked up at once
_OFFSETS = np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing='ij'), -1).reshape(-1, 3)  # [125, 3]


def _squared_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
  """[..., 3] × [..., 3] -> [...] float64, summed x, y, z left to right (nanoflann's L2 order)."""
  d = p[..., 0] - q[..., 0]
  out = d * d
  d = p[..., 1] - q[..., 1]
  out += d * d
  d = p[..., 2] - q[..., 2]
  out += d * d
  return out


def _pair_distance(columns: tuple, i: np.ndarray, j: np.ndarray) -> np.ndarray:
  """[M] squared distances between points i [M] and j [M] of the cloud given as its (x, y, z) columns, in the same
  order as `_squared_distance` (gathering from columns is several times faster than gathering [M, 3] rows)."""
  x, y, z = columns
  d = x[i] - x[j]
  out = d * d
  d = y[i] - y[j]
  out += d * d
  d = z[i] - z[j]
  out += d * d
  return out


class _Group:
  """A subset of the cube-sorted points, by cube: positions [M], starts [C], counts [C] and bounding boxes."""

  def __init__(self, points: np.ndarray, cube_of: np.ndarray, cubes: int, mask: np.ndarray):
    self.positions = np.flatnonzero(mask)
    self.counts = np.bincount(cube_of[self.positions], minlength=cubes)
    self.starts = np.r_[0, np.cumsum(self.counts)[:-1]]
    self.lo = np.full((cubes, 3), np.inf)
    self.hi = np.full((cubes, 3), -np.inf)
    held = np.flatnonzero(self.counts)
    if len(held):
      inside = points[self.positions]
      self.lo[held] = np.minimum.reduceat(inside, self.starts[held])
      self.hi[held] = np.maximum.reduceat(inside, self.starts[held])

  def members(self, cube: int) -> np.ndarray:
    return self.positions[self.starts[cube]:self.starts[cube] + self.counts[cube]]


def _gap2(lo: np.ndarray, hi: np.ndarray, lo2: np.ndarray, hi2: np.ndarray) -> np.ndarray:
  """[..., 3] boxes -> [...]: the squared distance between the closest points of two boxes (a point: lo = hi)."""
  gap = np.maximum(np.maximum(lo2 - hi, lo - hi2), 0)
  return (gap * gap).sum(-1)


class _Grid:
  """The points sorted by cube of side eps/2 (cube keys, coordinates and counts)."""

  def __init__(self, points: np.ndarray, eps: float):
    side = eps / 2 * (1 + _CELL_MARGIN)
    cube = np.floor((points - points.min(0)) / side).astype(np.int64) + 2  # +2: offsets -2..2 stay in range
    dims = cube.max(0) + 3
    if (dims > _MAX_CUBES).any():
      raise ValueError(f'DBSCAN: the cloud spans {dims.tolist()} cubes of side {side:g}; eps is too small for '
                       'its extent (check the units: MVTec 3D-AD is in metres)')
    self.strides = np.array([dims[1] * dims[2], dims[2], 1], np.int64)
    key = cube @ self.strides
    self.order = np.argsort(key, kind='stable')  # sorted position -> original index
    key = key[self.order]
    self.points = points[self.order]
    self.columns = tuple(np.ascontiguousarray(self.points.T))
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    self.keys = key[starts]                                       # [C] sorted cube keys
    self.coords = cube[self.order[starts]]                        # [C, 3] their cube coordinates
    self.counts = np.diff(np.r_[starts, len(key)])                # [C]
    self.cube_of = np.repeat(np.arange(len(starts)), self.counts)  # [N] sorted position -> cube
    self._near = None

  def group(self, mask: np.ndarray) -> _Group:
    return _Group(self.points, self.cube_of, len(self.keys), mask)

  def near_cubes(self, left: _Group, right: _Group, eps2: float) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): cube pairs, a holding points of `left`, b of `right` (a itself included), whose boxes may hold a
    pair within eps."""
    if self._near is None:  # every occupied cube within 2 cubes on each axis, found once
      near_a, near_b = [], []
      for first in range(0, len(self.keys), _CUBES_PER_LOOKUP):
        cubes = np.arange(first, min(first + _CUBES_PER_LOOKUP, len(self.keys)))
        wanted = (self.keys[cubes, None] + _OFFSETS @ self.strides).ravel()
        found = np.minimum(np.searchsorted(self.keys, wanted), len(self.keys) - 1)
        hit = self.keys[found] == wanted
        near_a.append(np.repeat(cubes, len(_OFFSETS))[hit])
        near_b.append(found[hit])
      self._near = np.concatenate(near_a), np.concatenate(near_b)
    a, b = self._near
    held = (left.counts[a] > 0) & (right.counts[b] > 0)
    a, b = a[held], b[held]
    near = _gap2(left.lo[a], left.hi[a], right.lo[b], right.hi[b]) < eps2 * (1 + _BOUND_MARGIN)
    return a[near], b[near]


def _expand(items: np.ndarray, cubes: np.ndarray, group: _Group):
  """Yields blocks (i, q): each item i_k repeated with every position q of `group` in cube cubes_k."""
  sizes = group.counts[cubes]
  keep = sizes > 0
  items, cubes, sizes = items[keep], cubes[keep], sizes[keep]
  ends = np.cumsum(sizes)
  first = 0
  while first < len(items):
    last = max(int(np.searchsorted(ends, ends[first] - sizes[first] + _PAIRS_PER_BLOCK, 'right')), first + 1)
    s = sizes[first:last]
    rep = np.repeat(np.arange(first, last), s)
    within = np.arange(int(s.sum())) - np.repeat(np.cumsum(s) - s, s)
    yield items[rep], group.positions[group.starts[cubes[rep]] + within]
    first = last


def _point_cube_pairs(grid: _Grid, left: _Group, right: _Group, eps2: float, rings: tuple[int, int] = (0, 12)):
  """Yields blocks (p, b, sure): points p of `left`, cubes b of `right` that may hold a point within eps of p;
  `sure` where all of b's points are. Only cubes whose squared offset from p's cube lies in `rings` (inclusive)."""
  a, b = grid.near_cubes(left, right, eps2)
  offset = ((grid.coords[b] - grid.coords[a]) ** 2).sum(1)
  ring = (offset >= rings[0]) & (offset <= rings[1])
  a, b = a[ring], b[ring]
  for cube_pair, p in _expand(np.arange(len(a)), a, left):
    cube = b[cube_pair]
    big = np.flatnonzero(right.counts[cube] >= _BOUNDED_CUBE)  # bounds cost more than a few distances
    point = grid.points[p[big]]
    lo, hi = right.lo[cube[big]], right.hi[cube[big]]
    maybe = np.ones(len(p), bool)
    maybe[big] = _gap2(point, point, lo, hi) < eps2 * (1 + _BOUND_MARGIN)
    far = np.maximum(np.abs(point - lo), np.abs(point - hi))
    sure = np.zeros(len(p), bool)
    sure[big] = (far * far).sum(-1) < eps2 * (1 - _BOUND_MARGIN)
    yield p[maybe], cube[maybe], sure[maybe]


def _find(parent: list, x: int) -> int:
  while parent[x] != x:
    parent[x] = parent[parent[x]]
    x = parent[x]
  return x


def cluster_dbscan(points: np.ndarray, eps: float, min_points: int) -> np.ndarray:
  """Open3D's `cluster_dbscan(eps, min_points)` labels of `points` [N, 3]: int32 [N], clusters 0.., noise -1."""
  points = np.asarray(points, np.float64)
  if points.ndim != 2 or points.shape[1] != 3:
    raise ValueError(f'DBSCAN: points must be [N, 3], got {points.shape}')
  if not np.isfinite(points).all():
    raise ValueError('DBSCAN: points must be finite (NaN or inf found)')
  if not eps > 0 or min_points < 1:
    raise ValueError(f'DBSCAN: needs eps > 0 and min_points ≥ 1, got eps={eps}, min_points={min_points}')
  if len(points) == 0:
    return np.zeros(0, np.int32)
  grid = _Grid(points, eps)
  if _PAIRS_PER_CUBE_POINT * (grid.counts.astype(np.float64) ** 2).sum() <= _PAIR_BUDGET:
    core, component, pairs = _sparse_clusters(points, eps, min_points)
  else:
    core, component, pairs = _dense_clusters(grid, eps, min_points)
  return _labels(core, component, pairs)


def _labels(core: np.ndarray, component: np.ndarray, pairs) -> np.ndarray:
  """int32 [N] labels from the core mask [N], the cluster id of each core point [N] (any id) and blocks (i, j) of
  the non-core points i with a core point j within eps: clusters renumbered by their lowest core-point index, a
  non-core point given the lowest number among its core neighbours' clusters."""
  n = len(core)
  cores = np.flatnonzero(core)
  ids, first = np.unique(component[cores], return_index=True)  # first core index of each cluster
  number = np.empty(len(ids), np.int64)
  number[np.argsort(first, kind='stable')] = np.arange(len(ids))
  labels = np.full(n, -1, np.int64)
  labels[cores] = number[np.searchsorted(ids, component[cores])]
  none = np.iinfo(np.int64).max
  best = np.full(n, none)
  for i, j in pairs:
    np.minimum.at(best, i, labels[j])
  reached = ~core & (best < none)
  labels[reached] = best[reached]
  return labels.astype(np.int32)


def _sparse_clusters(points: np.ndarray, eps: float, min_points: int):
  """(core [N], component [N], border pairs) from every pair within eps, for clouds with few such pairs: a k-d
  tree lists the pairs just beyond eps, and the exact squared distance keeps those strictly within."""
  n = len(points)
  i, j = spatial.cKDTree(points).query_pairs(eps * (1 + _BOUND_MARGIN), output_type='ndarray').T
  near = _pair_distance(tuple(np.ascontiguousarray(points.T)), i, j) < eps * eps
  i, j = i[near], j[near]
  core = 1 + np.bincount(i, minlength=n) + np.bincount(j, minlength=n) >= min_points
  linked = core[i] & core[j]
  graph = sparse.coo_matrix((np.ones(int(linked.sum())), (i[linked], j[linked])), shape=(n, n))
  component = csgraph.connected_components(graph, directed=False)[1]
  border = core[i] != core[j]
  i, j, swap = i[border], j[border], core[i[border]]
  return core, component, [(np.where(swap, j, i), np.where(swap, i, j))]


def _dense_clusters(grid: _Grid, eps: float, min_points: int):
  """(core [N], component [N], border pairs) in the original order, from the cubes: see the module docstring."""
  n = len(grid.points)
  eps2 = eps * eps
  # Core points: all of a dense cube. A point of a sparse cube counts its neighbours in its own cube and the six
  # next to it first (enough for ~97% of them on a scan), then, if still short, in the other 118 (a cube that lies
  # wholly within eps of the point counts whole).
  core = grid.counts[grid.cube_of] >= min_points
  everyone = grid.group(np.ones(n, bool))
  neighbours = np.zeros(n, np.int64)
  for rings in ((0, 1), (2, 12)):
    if core.all():
      break
    for p, cube, sure in _point_cube_pairs(grid, grid.group(~core), everyone, eps2, rings):
      neighbours += np.bincount(p[sure], weights=everyone.counts[cube[sure]], minlength=n).astype(np.int64)
      for i, q in _expand(p[~sure], cube[~sure], everyone):
        neighbours += np.bincount(i[_pair_distance(grid.columns, i, q) < eps2], minlength=n)
    core |= neighbours >= min_points

  # Clusters: cubes with core points, joined when two of their core points are within eps. Pairs of small cubes
  # are decided at once; the rest one by one, nearest cubes first, so most are already joined when their turn
  # comes, and a check compares only the points near the other cube's box.
  cores = grid.group(core)
  a, b = grid.near_cubes(cores, cores, eps2)
  forward = a < b
  a, b = a[forward], b[forward]
  small = cores.counts[a] * cores.counts[b] <= _SMALL_CUBE_PAIR
  offset = ((grid.coords[b] - grid.coords[a]) ** 2).sum(1)
  linked = np.zeros(len(a), bool)
  component = np.arange(len(grid.keys))
  for low, high in ((1, 1), (2, 3), (4, 12)):  # face neighbours first: most later pairs are joined by then
    ring = np.flatnonzero(small & (offset >= low) & (offset <= high) & (component[a] != component[b]))
    for pair, p in _expand(ring, a[ring], cores):
      for row, q in _expand(np.arange(len(p)), b[pair], cores):
        linked[pair[row[_pair_distance(grid.columns, p[row], q) < eps2]]] = True
    graph = sparse.coo_matrix((np.ones(int(linked.sum())), (a[linked], b[linked])), shape=(len(grid.keys),) * 2)
    component = csgraph.connected_components(graph, directed=False)[1]
  first_cube = np.full(component.max() + 1, len(grid.keys))
  np.minimum.at(first_cube, component, np.arange(len(grid.keys)))
  parent = first_cube[component].tolist()
  for i in np.flatnonzero(~small)[np.argsort(offset[~small], kind='stable')]:
    ca, cb = int(a[i]), int(b[i])
    ra, rb = _find(parent, ca), _find(parent, cb)
    if ra == rb:
      continue
    pa, pb = grid.points[cores.members(ca)], grid.points[cores.members(cb)]
    pa = pa[_gap2(pa, pa, cores.lo[cb], cores.hi[cb]) < eps2 * (1 + _BOUND_MARGIN)]
    pb = pb[_gap2(pb, pb, cores.lo[ca], cores.hi[ca]) < eps2 * (1 + _BOUND_MARGIN)]
    rows = max(1, _PAIRS_PER_BLOCK // max(len(pb), 1))
    if any((_squared_distance(pa[k:k + rows, None], pb[None]) < eps2).any() for k in range(0, len(pa), rows)):
      parent[max(ra, rb)] = min(ra, rb)
  root = np.array([_find(parent, c) for c in range(len(grid.keys))])
  component = np.empty(n, np.int64)
  component[grid.order] = root[grid.cube_of]
  core_original = np.empty(n, bool)
  core_original[grid.order] = core
  return core_original, component, _border_pairs(grid, core, cores, eps2)


def _border_pairs(grid: _Grid, core: np.ndarray, cores: _Group, eps2: float):
  """Yields blocks (i, j), original indices: non-core points i and core points j within eps of them."""
  if core.all():
    return
  for p, cube, _ in _point_cube_pairs(grid, grid.group(~core), cores, eps2):
    for i, q in _expand(p, cube, cores):
      near = _pair_distance(grid.columns, i, q) < eps2
      yield grid.order[i[near]], grid.order[q[near]]
