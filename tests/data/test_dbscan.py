"""The NumPy DBSCAN against Open3D's `cluster_dbscan`: identical labels, on both of its paths."""
import numpy as np
import pytest

from g2sf_jax.data import dbscan, preprocessing, synthetic
from g2sf_jax.data.transforms import valid_mask
from references import open3d_preprocessing as ref

PATHS = {'pairs': 10 ** 12, 'cubes': 0}  # _PAIR_BUDGET that forces each path


@pytest.fixture(params=sorted(PATHS))
def path(request, monkeypatch):
  monkeypatch.setattr(dbscan, '_PAIR_BUDGET', PATHS[request.param])
  return request.param


def _blobs(seed: int) -> tuple[np.ndarray, float, int]:
  """1-5 Gaussian blobs of 5-80 points, uniform noise, shuffled; eps and min_points drawn so that clusters,
  border points (some near two clusters) and noise all occur."""
  rng = np.random.default_rng(seed)
  parts = [rng.normal(size=(rng.integers(5, 80), 3)) * rng.uniform(0.002, 0.01) + rng.uniform(0, 0.05, 3)
           for _ in range(rng.integers(1, 6))]
  parts.append(rng.uniform(0, 0.05, (rng.integers(0, 60), 3)))
  points = np.concatenate(parts)
  return points[rng.permutation(len(points))], rng.uniform(0.002, 0.01), int(rng.integers(2, 12))


@pytest.mark.parametrize('seed', range(12))
def test_labels_equal_open3d_on_blobs(seed, path):
  points, eps, min_points = _blobs(seed)
  expected = ref.cluster_dbscan(points, eps, min_points)
  assert np.array_equal(dbscan.cluster_dbscan(points, eps, min_points), expected)


@pytest.mark.parametrize('spacing,eps', [(0.003, 0.006), (0.002, 0.006), (0.001, 0.002)])
def test_labels_equal_open3d_on_a_lattice_of_ties(spacing, eps, path):
  """Lattice points whose distances land on eps, where only the strict `d² < eps²` in nanoflann's order agrees."""
  grid = np.stack(np.meshgrid(np.arange(12), np.arange(9), np.arange(3), indexing='ij'), -1).reshape(-1, 3) * spacing
  grid = grid[np.random.default_rng(1).random(len(grid)) < 0.6]
  for min_points in (3, 5, 8, 12):
    assert np.array_equal(dbscan.cluster_dbscan(grid, eps, min_points), ref.cluster_dbscan(grid, eps, min_points))


def test_border_point_takes_the_cluster_with_the_lowest_first_core_index(path):
  """Two 4-point clusters 1.8 eps apart and one point between them, within eps of one point of each (so not core
  itself): it takes the cluster whose first core point comes first in the input, whatever its own position."""
  eps = 0.01
  left = np.array([[0, 0, 0], [-0.002, 0, 0], [-0.004, 0, 0], [-0.002, 0.002, 0]])
  right = left * [-1, 1, 1] + [0.018, 0, 0]
  bridge = np.array([[0.009, 0, 0]])
  points = np.concatenate([bridge, right, left])  # the right cluster's core points come first: it is cluster 0
  labels = dbscan.cluster_dbscan(points, eps, 4)
  assert labels.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
  assert np.array_equal(labels, ref.cluster_dbscan(points, eps, 4))
  lonely = np.concatenate([points, [[0.5, 0.5, 0.5]]])
  assert dbscan.cluster_dbscan(lonely, eps, 4)[-1] == -1


def test_dense_scan_takes_the_cube_path_and_equals_open3d():
  """A scan at 0.4 mm pitch: its cubes hold more than min_points, so labels come from the cubes; a few rows of
  flying pixels add noise and a second cluster."""
  _, xyz, _ = synthetic.render_sample('torus', 'good', 400, 3, fov=0.16)
  xyz, _, _ = preprocessing.remove_plane(xyz, None, seed=0)
  xyz[20:24, 100:160] = xyz[200:204, 100:160] + np.float32([0, 0, -0.05])
  points = xyz[valid_mask(xyz)].astype(np.float64)
  grid = dbscan._Grid(points, preprocessing.DBSCAN_EPS)
  assert dbscan._PAIRS_PER_CUBE_POINT * (grid.counts.astype(float) ** 2).sum() > dbscan._PAIR_BUDGET
  labels = dbscan.cluster_dbscan(points, preprocessing.DBSCAN_EPS, preprocessing.DBSCAN_MIN_POINTS)
  assert labels.max() >= 1
  assert np.array_equal(labels, ref.cluster_dbscan(points, preprocessing.DBSCAN_EPS, preprocessing.DBSCAN_MIN_POINTS))


def test_small_lookup_and_distance_blocks_give_the_same_labels(monkeypatch):
  """The neighbour-cube lookup and the cube-pair distance checks run in blocks: tiny blocks, the same labels."""
  points, eps, min_points = _blobs(3)
  expected = ref.cluster_dbscan(points, eps, min_points)
  monkeypatch.setattr(dbscan, '_PAIR_BUDGET', 0)
  monkeypatch.setattr(dbscan, '_CUBES_PER_LOOKUP', 3)
  monkeypatch.setattr(dbscan, '_PAIRS_PER_BLOCK', 5)
  monkeypatch.setattr(dbscan, '_SMALL_CUBE_PAIR', 0)  # every cube pair through the one-by-one check
  assert np.array_equal(dbscan.cluster_dbscan(points, eps, min_points), expected)


def test_bad_input_is_named():
  assert dbscan.cluster_dbscan(np.zeros((0, 3)), 0.01, 3).shape == (0,)
  with pytest.raises(ValueError, match=r'points must be \[N, 3\], got \(4, 2\)'):
    dbscan.cluster_dbscan(np.zeros((4, 2)), 0.01, 3)
  with pytest.raises(ValueError, match='eps > 0'):
    dbscan.cluster_dbscan(np.zeros((4, 3)), 0.0, 3)
  with pytest.raises(ValueError, match='eps is too small for its extent'):
    dbscan.cluster_dbscan(np.array([[0, 0, 0], [1e6, 1e6, 1e6]]), 1e-6, 3)
  with pytest.raises(ValueError, match='must be finite'):
    dbscan.cluster_dbscan(np.array([[0, 0, 0], [np.nan, 0, 0]]), 0.01, 3)
