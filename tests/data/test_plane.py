"""The NumPy RANSAC plane fit against Open3D's `segment_plane` (algorithms.md §1.2 step 1)."""
import numpy as np
import pytest

from g2sf_jax.data import plane, preprocessing, synthetic
from references import open3d_preprocessing as ref

_SETTINGS = (preprocessing.PLANE_RANSAC_THRESHOLD, preprocessing.PLANE_RANSAC_N,
             preprocessing.PLANE_RANSAC_ITERATIONS)


def _oriented(model: np.ndarray) -> np.ndarray:
  return model if model[3] >= 0 else -model


@pytest.mark.parametrize('shape,defect,size,fov', [('cube', 'good', 320, 0.32), ('cylinder', 'dent', 320, 0.32),
                                                  ('cube', 'good', 600, 0.16)])
def test_scan_plane_and_removed_pixels_equal_open3d(shape, defect, size, fov):
  """On a scan's border points both refit on the same inliers: the planes agree to rounding, and the pixels within
  0.005 of them (what preparation removes) are the same. (Where the object fills the border, e.g. the torus at fov
  0.16, the plane depends on the sample that wins, for Open3D from seed to seed as well.)"""
  _, xyz, _ = synthetic.render_sample(shape, defect, size, 5, fov=fov)
  edges = preprocessing.border_points(xyz)
  ours = _oriented(plane.segment_plane(edges, *_SETTINGS, seed=0))
  theirs = _oriented(ref.segment_plane(edges, *_SETTINGS, seed=0))
  np.testing.assert_allclose(ours, theirs, atol=1e-12)
  distance = lambda model: np.abs(xyz.astype(np.float64) @ model[:3] + model[3])
  assert np.array_equal(distance(ours) < preprocessing.PLANE_REMOVE_DISTANCE,
                        distance(theirs) < preprocessing.PLANE_REMOVE_DISTANCE)


def test_plane_from_points_is_the_least_squares_plane():
  """Open3D's formula regresses the thinnest axis (here z) on the other two: equal to `lstsq` of z on (x, y, 1)."""
  rng = np.random.default_rng(0)
  points = rng.normal(size=(5, 40, 3)) * [0.05, 0.03, 0.001] + [0.1, 0.2, 0.4]
  points[..., 2] += 0.2 * points[..., 0] - 0.1 * points[..., 1]
  model = plane.plane_from_points(points)
  for p, m in zip(points, model):
    (a, b, c), *_ = np.linalg.lstsq(np.column_stack([p[:, :2], np.ones(len(p))]), p[:, 2], rcond=None)
    np.testing.assert_allclose(m / -m[2], [a, b, -1, c], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(m[:3]), 1, atol=1e-12)
  assert not plane.plane_from_points(np.zeros((7, 3)) + [1, 2, 3]).any()


def test_seeded_and_robust_to_outliers():
  """A tilted plane with 30% of its points lifted off it: any seed finds the plane (to the bias of refitting one
  sample's inlier band, as Open3D's), a seed repeats its result."""
  rng = np.random.default_rng(1)
  xy = rng.uniform(-0.1, 0.1, (3000, 2))
  z = 0.4 + 0.1 * xy[:, 0] - 0.05 * xy[:, 1] + rng.normal(0, 5e-4, 3000)
  z[:900] += rng.uniform(0.01, 0.05, 900)
  points = np.column_stack([xy, z])
  truth = np.array([0.1, -0.05, -1, 0.4]) / np.linalg.norm([0.1, -0.05, -1])
  for seed in (0, 1, 2):
    model = plane.segment_plane(points, *_SETTINGS, seed=seed)
    np.testing.assert_allclose(_oriented(model), _oriented(truth), atol=5e-3)
    assert np.array_equal(model, plane.segment_plane(points, *_SETTINGS, seed=seed))


def test_collinear_border_is_a_problem_not_a_crash():
  xyz = np.zeros((60, 60, 3), np.float32)
  xyz[:, :] = np.stack([np.linspace(0, 0.1, 60)] * 3, -1)[:, None]  # every point on one line
  edges = preprocessing.border_points(xyz)
  assert plane.segment_plane(edges, *_SETTINGS, seed=0) is None
  out, _, problems = preprocessing.remove_plane(xyz, None, seed=0)
  assert [p.kind for p in problems] == ['no_border_plane'] and np.array_equal(out, xyz)
  with pytest.raises(ValueError, match='at least ransac_n points'):
    plane.segment_plane(edges[:10], *_SETTINGS, seed=0)


@pytest.mark.parametrize('count', [50, 60, 120])
def test_as_few_points_as_ransac_n_still_sample_distinct_points(count):
  """With barely more points than `ransac_n` a sample of 50 distinct indices is rare to draw at once: repeated
  indices are redrawn one by one, so the fit finishes."""
  rng = np.random.default_rng(count)
  points = np.column_stack([rng.uniform(-0.1, 0.1, (count, 2)), np.full(count, 0.4) + rng.normal(0, 1e-4, count)])
  samples = plane._distinct_samples(np.random.default_rng(0), count, 200, preprocessing.PLANE_RANSAC_N)
  assert all(len(set(row)) == preprocessing.PLANE_RANSAC_N for row in samples.tolist())
  model = _oriented(plane.segment_plane(points, *_SETTINGS, seed=0))
  np.testing.assert_allclose(model[2:], [-1, 0.4], atol=1e-3)
