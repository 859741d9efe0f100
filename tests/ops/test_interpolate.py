"""IDW interpolation (algorithms.md §2.4 step 1) against a float64 NumPy reference in the pointnet2 style, written here.
"""
import jax
import numpy as np

from g2sf_jax.ops import interpolate


def numpy_idw64(centers, feats, points, k=3):
  """G2SF computes this in float64: 3 smallest squared distances, weights 1/(d²+1e-8), normalised."""
  c, f, p = (np.asarray(a, np.float64) for a in (centers, feats, points))
  d2 = ((p[:, None, :] - c[None]) ** 2).sum(-1)
  idx = np.argsort(d2, axis=1, kind='stable')[:, :k]
  w = 1.0 / (np.take_along_axis(d2, idx, 1) + 1e-8)
  w /= w.sum(1, keepdims=True)
  return (f[idx] * w[..., None]).sum(1)


def test_hand_computed_line():
  centers = np.array([[[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]]], np.float32)
  feats = np.array([[[1.0], [2.0], [3.0], [4.0]]], np.float32)
  got = np.asarray(interpolate.idw(centers, feats, np.array([[[0.5, 0, 0]]], np.float32)))
  w = np.array([4.0, 4.0, 1 / 2.25])  # d² = 0.25, 0.25, 2.25
  np.testing.assert_allclose(got[0, 0, 0], (w * [1, 2, 3]).sum() / w.sum(), rtol=1e-6)


def test_float32_error_vs_float64_reference_is_negligible():
  rng = np.random.default_rng(0)
  for scale in (0.05, 1.0, 100.0):  # raw coordinates of any plausible unit
    points = (rng.normal(size=(2, 3000, 3)) * scale).astype(np.float32)
    centers = points[:, rng.choice(3000, 64, replace=False)]  # some points sit exactly on a centre
    feats = rng.normal(size=(2, 64, 32)).astype(np.float32)
    got = np.asarray(interpolate.idw(centers, feats, points))
    assert got.dtype == np.float32 and got.shape == (2, 3000, 32)
    for b in range(2):
      ref = numpy_idw64(centers[b], feats[b], points[b])
      err = np.abs(got[b] - ref).max()
      assert err < 1e-5, (scale, err)


def test_float64_when_x64_enabled():
  rng = np.random.default_rng(1)
  points = rng.normal(size=(1, 500, 3))
  centers = points[:, :20]
  feats = rng.normal(size=(1, 20, 8))
  with jax.enable_x64(True):
    got = np.asarray(interpolate.idw(centers, feats, points))
  assert got.dtype == np.float64
  np.testing.assert_allclose(got[0], numpy_idw64(centers[0], feats[0], points[0]), rtol=1e-10, atol=1e-12)


def test_equidistant_centres_go_to_the_lowest_indices():
  """A point at the middle of a square of 4 centres (and one on the square's axis): the 3 nearest by the stable
  order, as `argsort(kind='stable')` and `lax.top_k` choose, so the distinct features show which were taken."""
  centers = np.array([[[1, 1, 0], [-1, 1, 0], [3, 3, 0], [1, -1, 0], [-1, -1, 0]]], np.float32)
  feats = np.array([[[1.0], [10.0], [100.0], [1000.0], [10000.0]]], np.float32)
  points = np.array([[[0, 0, 0], [0, 1, 0]]], np.float32)
  got = np.asarray(interpolate.idw(centers, feats, points))
  np.testing.assert_allclose(got[0, 0, 0], (1 + 10 + 1000) / 3, rtol=1e-6)  # not 10000: index 4 ties, comes last
  np.testing.assert_allclose(got[0], numpy_idw64(centers[0], feats[0], points[0]), rtol=1e-6)
  assert np.asarray(interpolate.idw(centers, feats, points, k=9)).shape == (1, 2, 1)  # k above G: all centres
