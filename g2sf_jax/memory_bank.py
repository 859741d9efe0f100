"""PatchCore memory banks: normalisation, greedy coreset, sharded nearest-neighbour search, unimodal scoring.

SPEC §3. Full-size banks (765k × 1152 float32 for one MVTec PCD class) are only ever touched in row chunks: the
statistics, the random projection and the coreset rows are streamed, and nothing of size n×n or n×k is built.
Nearest-neighbour search splits the coreset along its rows over the caller's device mesh (`g2sf_jax.distributed`).
"""
import dataclasses
import functools
import math
import os
import time
from typing import Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from g2sf_jax import checkpoints
from g2sf_jax import distributed
from g2sf_jax.ops import fps
from g2sf_jax.ops import select
from g2sf_jax.ops import blur as blur_ops

_HIGHEST = jax.lax.Precision.HIGHEST
# Extra candidates per shard ranked by the fast 2q·b−‖b‖² scores before the exact re-ranking; the fast
# formula is only off by ~1e-7·(‖q‖²+‖b‖²), far below typical neighbour gaps, so 8 is ample.
_CANDIDATE_MARGIN = 8
BLUR_MODES = ('pil_uint8', 'float', 'none')  # SPEC §3.3: the reference's quantised Pillow blur, a float Gaussian
# Bank rows per device are a multiple of this, so the candidate selection can prune blocks of up to 32 rows (for
# 28 of 76,544 rows 4.4x faster than one `top_k`; below 16-row blocks pruning does not pay).
_SEARCH_BLOCK = 32
QUERY_CHUNK = 784  # a quarter of the 56×56 grid: a batch of samples splits into whole chunks, no padding


def _row_chunks(num_rows: int, chunk_rows: int) -> Iterator[slice]:
  for start in range(0, num_rows, chunk_rows):
    yield slice(start, min(start + chunk_rows, num_rows))


# ---------------------------------------------------------------------------------------------------------------
# Normalisation (SPEC §3.1)


@dataclasses.dataclass(frozen=True)
class Normaliser:
  """`x ↦ (x − mean) / std` with scalars, applied in float32 to bank, test and synthetic features alike."""
  mean: float = 0.0
  std: float = 1.0

  @classmethod
  def identity(cls) -> 'Normaliser':
    """PCD banks are not normalised ("following M3DM", SPEC §3.1)."""
    return cls(0.0, 1.0)

  @classmethod
  def fit(cls, bank: np.ndarray, chunk_rows: int = 8192) -> 'Normaliser':
    """Scalar mean and unbiased std over all elements of `bank [n, d]` (IMG, SPEC §3.1).

    Two streaming passes with float64 accumulators; only one float64 chunk exists at a time.
    """
    n = bank.size
    if n < 2:
      raise ValueError(f'Normaliser.fit needs at least 2 elements, got bank of shape {bank.shape}')
    total = 0.0
    for rows in _row_chunks(bank.shape[0], chunk_rows):
      total += float(np.sum(bank[rows], dtype=np.float64))
    mean = total / n
    sq = 0.0
    for rows in _row_chunks(bank.shape[0], chunk_rows):
      dev = bank[rows].astype(np.float64) - mean
      sq += float(np.einsum('ij,ij->', dev, dev))
    return cls(mean, math.sqrt(sq / (n - 1)))

  def __call__(self, x: np.ndarray) -> np.ndarray:
    """`[..., d]` → float32 `[..., d]` (the float64 statistics are rounded to float32, as torch stores them)."""
    x = np.asarray(x, np.float32)
    if self.mean == 0.0 and self.std == 1.0:
      return x
    return (x - np.float32(self.mean)) / np.float32(self.std)


# ---------------------------------------------------------------------------------------------------------------
# Coreset (SPEC §3.2)


def projection_dim(num_rows: int, eps: float = 0.9) -> int:
  """Johnson–Lindenstrauss dimension `int(4 ln n / (eps²/2 − eps³/3))` (sklearn's formula)."""
  return int(4 * math.log(num_rows) / (eps ** 2 / 2 - eps ** 3 / 3))


def sparse_projection_matrix(key: jax.Array, d_in: int, n_components: int) -> np.ndarray:
  """`[d_in, n_components]` float32 sparse random projection, density `1/√d_in` (SPEC §3.2).

  Entries are `±√(1/density)/√n_components` with probability density/2 each, 0 otherwise — the distribution of
  sklearn's `SparseRandomProjection`, drawn from a JAX key so runs reproduce on any platform.
  """
  density = 1 / math.sqrt(d_in)
  scale = math.sqrt(1 / density) / math.sqrt(n_components)
  u = np.asarray(jax.random.uniform(key, (d_in, n_components), jnp.float32))
  out = np.zeros((d_in, n_components), np.float32)
  out[u < density / 2] = -scale
  out[(u >= density / 2) & (u < density)] = scale
  return out


@jax.jit
def _project_chunk(x: jax.Array, matrix: jax.Array) -> jax.Array:
  return jnp.dot(x, matrix, precision=_HIGHEST)


@jax.jit
def _distances_to(z: jax.Array, z0: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(z - z0), axis=1))


def project(bank: np.ndarray, matrix: np.ndarray, normaliser: Normaliser | None = None,
            dtype: np.dtype = np.float32, chunk_rows: int = 16384) -> tuple[np.ndarray, np.ndarray]:
  """Projects `normaliser(bank) [n, d]` → `(z [n, c] dtype, dist0 [n] float32)`, one row chunk at a time.

  `dist0 = ‖z − z₀‖` in float32 before any cast: the reference's initial running minimum (SPEC §3.2 step 1).
  """
  normaliser = normaliser or Normaliser.identity()
  n = bank.shape[0]
  z_out = np.empty((n, matrix.shape[1]), dtype)
  dist0 = np.empty((n,), np.float32)
  matrix = jnp.asarray(matrix)
  z0 = None
  chunk_rows = min(chunk_rows, n)
  for rows in _row_chunks(n, chunk_rows):
    x = normaliser(bank[rows])
    valid = x.shape[0]
    if valid < chunk_rows:  # one compiled shape for every chunk
      x = np.concatenate([x, np.zeros((chunk_rows - valid, x.shape[1]), np.float32)])
    z = _project_chunk(x, matrix)
    z0 = z[0] if z0 is None else z0  # row 0 exactly as stored, so dist0[0] == 0
    d = _distances_to(z, z0)
    z_out[rows] = np.asarray(z[:valid]).astype(dtype)
    dist0[rows] = np.asarray(d[:valid])
  return z_out, dist0


GREEDY_MODES = ('reference', 'fast')


def _greedy_dtype(fp16: bool):
  return jnp.float16 if fp16 else jnp.float32


# Rows per tile of the greedy's distance pass on CPU. XLA:CPU runs one [n, c] row-reduction fusion ~5× slower than
# the same work as a loop over [8192, c] tiles (5.5 MB of fp16 at c = 334, L2/L3-sized): 1.6–1.8× one read pass
# over the bank at MVTec size, bound by XLA:CPU's arithmetic, not by bandwidth (BENCHMARKS.md); no operation of any
# row changes. Accelerators take each device's rows as one tile: a loop over 77 tiles would launch 77 small kernels
# in each of a full PCD coreset's ~62.7k iterations.
GREEDY_TILE = 8192


def _greedy_tile(num_rows: int, mesh: Mesh, tile: int | None) -> int:
  """Tile rows for a bank of `num_rows` on `mesh`: `tile` (None: `GREEDY_TILE` on CPU, else one tile per device),
  at most one tile per device for a smaller bank."""
  per_device = -(-num_rows // mesh.size)
  if tile is None:
    tile = GREEDY_TILE if distributed.on_cpu(mesh) else per_device
  return max(1, min(tile, per_device))


@functools.partial(jax.jit, static_argnames=('fp16', 'mode', 'mesh', 'tile'), donate_argnums=1)
def _greedy_steps(z: jax.Array, carry: tuple, sq_norms: jax.Array, start: jax.Array, stop: jax.Array, *,
                  fp16: bool, mode: str, mesh: Mesh, tile: int) -> tuple:
  """Iterations [start, stop) of the greedy on the row-sharded `z`; one compiled program for any range.

  Each shard updates the running minimum of its rows, `tile` rows at a time; the shards' maxima are gathered and
  the largest wins, ties to the lowest device and so the lowest global row (each shard takes its first max),
  exactly the first argmax of one device; the winner's row is broadcast (a psum of it and zeros) as the next centre.
  """
  dt = _greedy_dtype(fp16)
  axis = distributed.axis_name(mesh)

  def local(z, mind, sq, last_row, idx, start, stop):
    rows = z.shape[0]
    offset = jax.lax.axis_index(axis) * rows
    tiles = (z.reshape(rows // tile, tile, z.shape[1]), sq.reshape(rows // tile, tile))

    def tile_distances(zl, zt, sqt):
      if mode == 'fast':  # ‖z‖² − 2 z·zₗ + ‖zₗ‖², one matrix-vector product over the bank
        d2 = sqt - 2 * jnp.dot(zt.astype(jnp.float32), zl, precision=_HIGHEST) + jnp.dot(zl, zl, precision=_HIGHEST)
        return jnp.sqrt(jnp.maximum(d2, 0)).astype(dt)
      diff = (zt.astype(jnp.float32) - zl).astype(dt).astype(jnp.float32)
      return jnp.sqrt(jnp.sum(diff * diff, axis=1)).astype(dt)

    def body(i, carry):
      mind, last_row, idx = carry
      zl = last_row.astype(jnp.float32)
      d = jax.lax.map(lambda t: tile_distances(zl, *t), tiles).reshape(rows)
      mind = jnp.minimum(mind, d)
      j_local = fps.first_argmax(mind)
      values = jax.lax.all_gather(mind[j_local], axis)
      winners = jax.lax.all_gather(j_local + offset, axis)
      j = winners[fps.first_argmax(values)]
      here = j - offset
      mine = (here >= 0) & (here < rows)
      here = jnp.clip(here, 0, rows - 1)
      mind = mind.at[here].set(jnp.where(mine, 0, mind[here]))
      last_row = jax.lax.psum(jnp.where(mine, z[here].astype(jnp.float32), 0.0), axis).astype(z.dtype)
      return mind, last_row, idx.at[i].set(j)

    return jax.lax.fori_loop(start, stop, body, (mind, last_row, idx))

  spec = P(axis)
  return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, P(), P(), P(), P()),
                       out_specs=(spec, P(), P()), check_vma=False)(z, carry[0], sq_norms, carry[1], carry[2],
                                                                     start, stop)


def greedy_k_center(z: np.ndarray | jax.Array, dist0: np.ndarray | jax.Array, k: int, fp16: bool, *, mesh: Mesh,
                    progress: Callable[[int, int], None] | None = None, seconds_per_call: float = 2.0,
                    mode: str = 'reference', tile: int | None = None) -> np.ndarray:
  """Reference greedy k-centre on the projected bank `z [n, c]` → `[k]` int32 row indices (SPEC §3.2).

  Starts at row 0 with running minimum `dist0`; k−1 iterations, the first re-using row 0. Each picks the first
  argmax of the running minimum and zeroes it. `fp16=True` reproduces the reference's float16 arithmetic: the
  bank, the differences and the distances are float16 (sums of squares accumulate in float32, as CUDA does).
  `mode='fast'` computes the distances as ‖z‖² − 2 z·zₗ + ‖zₗ‖² (one matrix-vector product; other rounding, so
  other picks among near ties: BENCHMARKS.md measures the cost and the effect).

  The bank's rows are split over `mesh` (one running minimum per shard, the same picks on any number of devices).
  The iterations run in device calls of about `seconds_per_call` each; `progress(done, k)` is called after each,
  so a multi-hour coreset reports its progress (and an ETA) instead of running silent. Neither this chunking nor
  the `tile` rows per distance pass (speed only; None: `_greedy_tile`'s choice for the platform) changes a single
  operation: the result is that of one loop.
  """
  if mode not in GREEDY_MODES:
    raise ValueError(f'greedy_k_center: mode must be one of {GREEDY_MODES}, got {mode!r}')
  dt = _greedy_dtype(fp16)
  z_host = np.asarray(z, dtype=dt)
  tile = _greedy_tile(z_host.shape[0], mesh, tile)
  z_dev = distributed.shard_rows(z_host, mesh, multiple=tile)
  if mode == 'fast':
    z32 = z_dev.astype(jnp.float32)
    sq = jnp.sum(z32 * z32, axis=1)
    del z32
  else:
    sq = jnp.zeros(z_dev.shape[:1], jnp.float32, device=z_dev.sharding)  # unused by the reference arithmetic
  # padding rows start at −inf: never the max
  mind = distributed.shard_rows(np.asarray(dist0).astype(dt), mesh, value=-np.inf, multiple=tile)
  carry = (mind, distributed.replicate(z_host[0], mesh), distributed.replicate(np.zeros((k,), np.int32), mesh))
  done, steps = 1, 8
  while done < k:
    stop = min(k, done + steps)
    began = time.perf_counter()
    carry = jax.block_until_ready(_greedy_steps(z_dev, carry, sq, jnp.int32(done), jnp.int32(stop), fp16=fp16,
                                                mode=mode, mesh=mesh, tile=tile))
    elapsed = time.perf_counter() - began
    steps = max(1, min(4 * steps, int(steps * seconds_per_call / max(elapsed, 1e-6))))
    done = stop
    if progress is not None:
      progress(done, k)
  return np.asarray(carry[2])


def coreset_size(num_rows: int, fraction: float) -> int:
  """`k = int(fraction·n)`, at least 1."""
  return max(1, int(fraction * num_rows))


def coreset(bank: np.ndarray, fraction: float, eps: float, key: jax.Array, fp16: bool = True,
            normaliser: Normaliser | None = None, chunk_rows: int = 16384,
            progress: Callable[[int, int], None] | None = None, size: int | None = None, *, mesh: Mesh,
            mode: str = 'reference') -> np.ndarray:
  """Sparse-random-projection greedy coreset of `normaliser(bank) [n, d]` → `[k]` int32 indices (SPEC §3.2).

  k = `size`, or `coreset_size(n, fraction)` when it is None.

  `key` seeds the projection (the reference's is unseeded). The bank stays on the host; only the projected
  `[n, c]` bank (c ≈ 340; float16 when `fp16`) goes to the device. When c ≥ d (FPFH's 33 dimensions; never for
  the reference's 768/1152) the greedy runs on the normalised rows themselves: sklearn would project *up*, which
  only approximates the distances it already has, at c/d times the cost (8.6× for a 100k-row FPFH bank).
  """
  if bank.ndim != 2 or bank.shape[0] < 2:
    raise ValueError(f'coreset: expected a bank [n>=2, d], got shape {bank.shape}')
  n, d = bank.shape
  c = projection_dim(n, eps)
  matrix = sparse_projection_matrix(key, d, c) if c < d else np.eye(d, dtype=np.float32)
  z, dist0 = project(bank, matrix, normaliser, np.float16 if fp16 else np.float32, chunk_rows)
  k = size if size is not None else coreset_size(n, fraction)
  if not 1 <= k <= n:
    raise ValueError(f'coreset: {k} rows requested from a bank of {n}')
  return greedy_k_center(z, dist0, k, fp16, mesh=mesh, progress=progress, mode=mode)


def gather_rows(bank: np.ndarray, idx: np.ndarray, normaliser: Normaliser | None = None) -> np.ndarray:
  """`normaliser(bank[idx])` → `[k, d]` float32: the coreset (the *unprojected* normalised rows)."""
  return (normaliser or Normaliser.identity())(bank[np.asarray(idx)])


# ---------------------------------------------------------------------------------------------------------------
# Nearest-neighbour search over a row-sharded bank


class ShardedBank(NamedTuple):
  """A bank placed once on a mesh: rows padded to a multiple of 32 × the device count and split along them.

  Each row is stored as `[b, ‖b‖², 0…]` (width a multiple of 8), so ranking a query `q` against the bank is one
  matmul with `[2q, −1, 0…]`: `2q·b − ‖b‖²` orders the rows as the distance does (‖q‖² is constant per query),
  with no elementwise pass over the [queries, rows] block (that pass cost half as much as the matmul on CPU).
  Padding rows carry ‖b‖² = +inf and rank last.
  """
  rows: jax.Array       # [m_pad, d_aug] float32, row-sharded: bank columns [:dim], then ‖b‖², then zeros
  dim: int              # d, the bank's feature width
  num_rows: int         # m: rows ≥ m are padding and never returned
  mesh: Mesh


def _ranking_width(dim: int) -> int:
  return -(-(dim + 1) // 8) * 8


def place_bank(bank: np.ndarray | ShardedBank, mesh: Mesh | None = None) -> ShardedBank:
  """Puts `bank [m, d]` on the caller's `mesh`. A `ShardedBank` is returned as is (`mesh` may then be omitted)."""
  if isinstance(bank, ShardedBank):
    if mesh is not None and mesh != bank.mesh:
      raise ValueError('place_bank: the bank is already placed on a different mesh')
    return bank
  if mesh is None:
    raise ValueError('place_bank: pass the mesh to place the bank on (distributed.make_mesh(); the runner has one)')
  bank = np.asarray(bank, np.float32)
  if bank.ndim != 2:
    raise ValueError(f'place_bank: expected a bank [m, d], got shape {bank.shape}')
  m, d = bank.shape
  rows = np.zeros((distributed.padded_rows(m, mesh, _SEARCH_BLOCK), _ranking_width(d)), np.float32)
  rows[:m, :d] = bank
  rows[:m, d] = np.einsum('ij,ij->i', bank, bank)  # only ranks candidates; exact distances are recomputed
  rows[m:, d] = np.inf
  return ShardedBank(distributed.shard_rows(rows, mesh), d, m, mesh)


def bank_rows(bank: ShardedBank, idx: np.ndarray) -> np.ndarray:
  """Rows `idx [...]` of a placed bank → `[..., d]` float32 on the host."""
  return np.asarray(bank.rows[jnp.asarray(idx)][..., :bank.dim])


@functools.partial(jax.jit, static_argnames=('k', 'num_candidates', 'num_rows', 'dim', 'mesh'))
def _knn_chunk(queries, rows, *, k, num_candidates, num_rows, dim, mesh):
  axis = distributed.axis_name(mesh)

  def local(q, b):
    shard_rows = b.shape[0]
    gidx = jax.lax.axis_index(axis) * shard_rows + jnp.arange(shard_rows, dtype=jnp.int32)
    ranking_q = jnp.concatenate([2 * q, -jnp.ones((q.shape[0], 1), q.dtype),
                                 jnp.zeros((q.shape[0], b.shape[1] - dim - 1), q.dtype)], axis=1)
    score = jnp.dot(ranking_q, b.T, precision=_HIGHEST)                 # 2q·b − ‖b‖², larger = nearer
    block = select.block_size(shard_rows, num_candidates, max_block=_SEARCH_BLOCK, min_block=16)
    local_idx = select.top_k_indices(score, num_candidates, block)      # [qc, kc]
    # One candidate column at a time: XLA:CPU then fuses the row gather into the reduction (7x faster than
    # gathering the [qc, kc, d] block first, which dominated for small banks).
    exact = jax.lax.map(lambda col: jnp.sum(jnp.square(q - b[col, :dim]), axis=-1), local_idx.T)
    exact = jnp.sqrt(exact.T)                                           # [qc, kc]
    cand_gidx = gidx[local_idx]
    exact = jnp.where(cand_gidx < num_rows, exact, jnp.inf)
    all_d = jax.lax.all_gather(exact, axis, axis=1, tiled=True)         # [qc, devices·kc]
    all_i = jax.lax.all_gather(cand_gidx, axis, axis=1, tiled=True)
    d, i = jax.lax.sort((all_d, all_i), dimension=1, num_keys=2)       # ties → lowest global index
    return d[:, :k], i[:, :k]

  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis)), out_specs=(P(), P()),
                       check_vma=False)(queries, rows)


def knn_search(queries: np.ndarray, bank: np.ndarray | ShardedBank, k: int, mesh: Mesh | None = None,
               query_chunk: int = QUERY_CHUNK) -> tuple[np.ndarray, np.ndarray]:
  """The `k` nearest bank rows of each query: `(dist [q, k] float32, idx [q, k] int32)`, ascending.

  The bank is split along its rows over `mesh`; each shard ranks its rows by `2q·b−‖b‖²` (one HIGHEST-precision
  matmul, see `ShardedBank`), keeps `k+8` candidates, recomputes their exact float32 distance `‖q−b‖` and the
  shards' candidates are merged by (distance, global index). The result does not depend on the number of devices. Note torch.cdist
  (the reference) uses the fast formula for large inputs, which is ~1e-3 relatively off for near-identical vectors.
  """
  bank = place_bank(bank, mesh)
  queries = np.asarray(queries, np.float32)
  if queries.ndim != 2 or queries.shape[1] != bank.dim:
    raise ValueError(f'knn_search: queries {queries.shape} do not match bank rows of dim {bank.dim}')
  if not 1 <= k <= bank.num_rows:
    raise ValueError(f'knn_search: k={k} must be in [1, {bank.num_rows}] (the bank size)')
  shard_rows = bank.rows.shape[0] // bank.mesh.size
  num_candidates = min(k + _CANDIDATE_MARGIN, shard_rows)
  num_q = queries.shape[0]
  chunk = max(1, min(query_chunk, num_q))
  dist = np.empty((num_q, k), np.float32)
  idx = np.empty((num_q, k), np.int32)
  for rows in _row_chunks(num_q, chunk):
    q = queries[rows]
    valid = q.shape[0]
    if valid < chunk:
      q = np.concatenate([q, np.zeros((chunk - valid, q.shape[1]), np.float32)])
    d, i = _knn_chunk(distributed.replicate(q, bank.mesh), bank.rows, k=k, num_candidates=num_candidates,
                      num_rows=bank.num_rows, dim=bank.dim, mesh=bank.mesh)
    dist[rows] = np.asarray(d)[:valid]
    idx[rows] = np.asarray(i)[:valid]
  return dist, idx


# ---------------------------------------------------------------------------------------------------------------
# Unimodal scoring (SPEC §3.3)


class UnimodalResult(NamedTuple):
  image_score: np.float32      # re-weighted max patch distance
  min_dist: np.ndarray         # [P] float32, distance to the nearest coreset row (P = grid², 3136)
  min_idx: np.ndarray          # [P] int32
  anchor_idx: np.ndarray       # [P, num_anchors] int32, ascending distance; column 0 = min_idx
  map224: np.ndarray           # [map_size, map_size] float32 pixel map (upsampled and blurred)


@functools.partial(jax.jit, static_argnames='size')
def upsample_bilinear(grid_map: jax.Array, size: int) -> jax.Array:
  """`[h, w]` → `[size, size]` like torch `interpolate(bilinear, align_corners=False)`, same operation order."""

  def taps(n_in: int):
    src = jnp.maximum((jnp.arange(size, dtype=jnp.float32) + 0.5) * jnp.float32(n_in / size) - 0.5, 0.0)
    i0 = src.astype(jnp.int32)
    i1 = jnp.where(i0 < n_in - 1, i0 + 1, i0)
    lam1 = src - i0.astype(jnp.float32)
    return i0, i1, 1 - lam1, lam1

  h0, h1, hl0, hl1 = taps(grid_map.shape[0])
  w0, w1, wl0, wl1 = taps(grid_map.shape[1])
  x = grid_map.astype(jnp.float32)
  top = wl0[None] * x[h0][:, w0] + wl1[None] * x[h0][:, w1]
  bottom = wl0[None] * x[h1][:, w0] + wl1[None] * x[h1][:, w1]
  return hl0[:, None] * top + hl1[:, None] * bottom


def score_map(min_dist: np.ndarray, blur: str = 'pil_uint8', size: int = 224) -> np.ndarray:
  """`[P]` patch distances → `[size, size]` pixel map: bilinear ×(size/grid), then the blur (SPEC §3.3 step 3).

  `blur`: 'pil_uint8' (the reference's quantised Pillow blur), 'float' (Gaussian σ=4) or 'none'.
  """
  grid = math.isqrt(min_dist.shape[0])
  if grid * grid != min_dist.shape[0]:
    raise ValueError(f'score_map: {min_dist.shape[0]} patches do not form a square grid')
  up = upsample_bilinear(jnp.asarray(min_dist, jnp.float32).reshape(grid, grid), size)
  if blur == 'pil_uint8':
    up = blur_ops.pil_gaussian_blur(up)
  elif blur == 'float':
    up = blur_ops.float_gaussian_blur(up, sigma=4.0)
  elif blur != 'none':
    raise ValueError(f'score_map: blur must be one of {BLUR_MODES}, got {blur!r}')
  return np.asarray(up)


def _reweighted_score(feats: np.ndarray, bank: ShardedBank, min_dist: np.ndarray, min_idx: np.ndarray,
                      eps: float) -> np.float32:
  """PatchCore re-weighting of the max patch distance with the 2nd and 3rd neighbours of m* (SPEC §3.3 step 2)."""
  p = int(np.argmax(min_dist))
  s_star = min_dist[p]
  m_star = bank_rows(bank, np.array([min_idx[p]]))
  _, nn = knn_search(m_star, bank, 3)
  neighbours = bank_rows(bank, nn[0, 1:])
  knn_dist = np.sqrt(np.sum(np.square(feats[p][None] - neighbours), axis=1, dtype=np.float32))
  root_d = np.sqrt(np.float32(feats.shape[1]))
  w = 1 - np.exp(s_star / root_d) / (np.sum(np.exp(knn_dist / root_d)) + np.float32(eps))
  return np.float32(w * s_star)


def unimodal_scores_batch(feats: np.ndarray, coreset_rows: np.ndarray | ShardedBank, mesh: Mesh | None = None,
                          blur: str = 'pil_uint8', num_anchors: int = 20, map_size: int = 224,
                          query_chunk: int = QUERY_CHUNK, reweight_eps: float = 1e-5) -> list[UnimodalResult]:
  """`feats [B, P, D]` (normalised) against a coreset → one `UnimodalResult` per sample (SPEC §3.3).

  All B·P patches go through one sharded search; place the coreset once per class with `place_bank`.
  `reweight_eps` is the ε in the re-weighting's denominator (G²SF 1e-5; M3DM's three-bank scoring has none).
  """
  feats = np.asarray(feats, np.float32)
  bank = place_bank(coreset_rows, mesh)
  b, num_patches, dim = feats.shape
  k = min(num_anchors, bank.num_rows)
  dist, idx = knn_search(feats.reshape(b * num_patches, dim), bank, k, query_chunk=query_chunk)
  dist, idx = dist.reshape(b, num_patches, k), idx.reshape(b, num_patches, k)
  out = []
  for s in range(b):
    # Column 0 of our ascending search already is the argmin (first index on ties), i.e. the reference's
    # "topk with column 0 overwritten by argmin".
    min_dist, min_idx = dist[s, :, 0], idx[s, :, 0]
    score = _reweighted_score(feats[s], bank, min_dist, min_idx, reweight_eps)
    out.append(UnimodalResult(score, min_dist, min_idx, idx[s], score_map(min_dist, blur, map_size)))
  return out


def unimodal_scores(feats: np.ndarray, coreset_rows: np.ndarray | ShardedBank, mesh: Mesh | None = None,
                    blur: str = 'pil_uint8', num_anchors: int = 20, map_size: int = 224,
                    query_chunk: int = QUERY_CHUNK) -> UnimodalResult:
  """`feats [P, D]` (normalised, P = 3136) against `coreset_rows [m, D]` → `UnimodalResult` (SPEC §3.3)."""
  return unimodal_scores_batch(np.asarray(feats)[None], coreset_rows, mesh, blur, num_anchors, map_size,
                               query_chunk)[0]


# ---------------------------------------------------------------------------------------------------------------
# One modality's bank, built and stored


@dataclasses.dataclass(frozen=True)
class ModalityBank:
  coreset: np.ndarray          # [k, d] float32 normalised coreset rows
  coreset_idx: np.ndarray      # [k] int32 rows of the full bank they came from
  normaliser: Normaliser


def build(bank: np.ndarray, normalise: bool, fraction: float, eps: float, key: jax.Array, fp16: bool = True,
          chunk_rows: int = 16384, progress: Callable[[int, int], None] | None = None,
          normaliser: Normaliser | None = None, size: int | None = None, *, mesh: Mesh,
          mode: str = 'reference') -> ModalityBank:
  """Full bank `[n, d]` (raw features, any background rows included) → its normalised coreset (SPEC §3.1–3.2).

  `normalise`: True for IMG (scalar mean/std of this bank), False for PCD; a given `normaliser` replaces that choice
  (M3DM normalises all its banks with statistics of two of them). `size` fixes k instead of `fraction`. `bank` is
  not modified and may be a memmap.
  """
  if normaliser is None:
    normaliser = Normaliser.fit(bank, chunk_rows) if normalise else Normaliser.identity()
  idx = coreset(bank, fraction, eps, key, fp16, normaliser, chunk_rows, progress, size, mesh=mesh, mode=mode)
  return ModalityBank(gather_rows(bank, idx, normaliser), idx, normaliser)


def save(path: str | os.PathLike, banks: dict[str, ModalityBank], meta: dict | None = None) -> None:
  """Stores `{modality: ModalityBank}` (one class) as an orbax checkpoint at `path`, atomically."""
  tree = {name: {'coreset': np.asarray(b.coreset, np.float32),
                 'coreset_idx': np.asarray(b.coreset_idx, np.int32),
                 'mean': np.asarray([b.normaliser.mean], np.float64),
                 'std': np.asarray([b.normaliser.std], np.float64)} for name, b in banks.items()}
  checkpoints.save(path, tree, dict(meta or {}, modalities=sorted(banks)))


def load(path: str | os.PathLike, how_to_make: str = '') -> tuple[dict[str, ModalityBank], dict]:
  """Inverse of `save`: `({modality: ModalityBank}, meta)`."""
  tree, meta = checkpoints.load(path, how_to_make)
  banks = {}
  for name, t in tree.items():
    missing = {'coreset', 'coreset_idx', 'mean', 'std'} - set(t)
    if missing:
      raise ValueError(f'memory bank checkpoint {path}: modality {name!r} lacks {sorted(missing)}')
    banks[name] = ModalityBank(np.asarray(t['coreset'], np.float32), np.asarray(t['coreset_idx'], np.int32),
                               Normaliser(float(t['mean'][0]), float(t['std'][0])))
  return banks, meta
