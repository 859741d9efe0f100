import ml_collections
import numpy as np
import open3d as o3d
import pytest
import scipy.spatial

from g2sf_jax import fpfh


def _scene(seed: int = 0, size: int = 224) -> np.ndarray:
  """[size,size,3] organised view (metres) of a 3 cm bump on a tilted patch, 0.4 m from a camera at the origin.

  Only an 80x80-pixel window is valid (keeps Open3D fast); a few holes and partly-zero points inside it.
  """
  rng = np.random.default_rng(seed)
  u = (np.arange(size) - size / 2) * 0.0005
  x, y = np.meshgrid(u, u)
  z = 0.4 + 0.2 * x - 0.1 * y - 0.015 * np.exp(-(x**2 + y**2) / (2 * 0.006**2))
  z = z + rng.normal(0, 2e-5, z.shape)
  xyz = np.stack([x * z / 0.4, y * z / 0.4, z], -1).astype(np.float32)
  window = np.zeros((size, size), bool)
  window[70:150, 60:140] = True
  window &= rng.random((size, size)) > 0.02
  xyz[~window] = 0
  xyz[100, 100, 0] = 0  # x = 0 only: still invalid (algorithms.md §1.4)
  return xyz


def _direct_open3d(points: np.ndarray, p: fpfh.FpfhParams) -> np.ndarray:
  """Open3D called directly; the spacing (median nearest-neighbour distance) comes from SciPy."""
  dist, _ = scipy.spatial.cKDTree(points).query(points, k=2)
  spacing = np.median(dist[:, 1])
  cloud = o3d.geometry.PointCloud()
  cloud.points = o3d.utility.Vector3dVector(points.astype(np.float64))
  cloud.estimate_normals(search_param=o3d.geometry.KDTreeSearchParamHybrid(p.normal_radius * spacing,
                                                                           p.normal_max_nn))
  cloud.orient_normals_towards_camera_location(camera_location=np.array([0.0, 0.0, 0.0]))
  feats = o3d.pipelines.registration.compute_fpfh_feature(
      cloud, search_param=o3d.geometry.KDTreeSearchParamHybrid(p.feature_radius * spacing, p.feature_max_nn))
  return np.asarray(feats.data).T * p.scale


def test_shape_zeros_and_equality_with_open3d():
  xyz = np.stack([_scene(0), _scene(1)])
  out = fpfh.FpfhBackbone()(xyz)
  assert out.shape == (2, 224, 224, 33) and out.dtype == np.float32
  for b in range(2):
    valid = np.all(xyz[b] != 0, axis=-1)
    assert valid.sum() > 5000 and not valid[100, 100]
    assert np.all(out[b][~valid] == 0)
    # Reference: the valid points in raster order (row-major loop), straight through Open3D.
    rows, cols = np.nonzero(valid)
    ref = _direct_open3d(xyz[b][rows, cols], fpfh.FpfhParams())
    np.testing.assert_allclose(out[b][rows, cols], ref, atol=1e-5)
    # Open3D's three sub-histograms of 200 each, rescaled to a mean bin of 1.
    np.testing.assert_allclose(out[b][rows, cols].sum(-1), 33.0, rtol=1e-5)


def test_invalid_pixel_contents_do_not_matter():
  xyz = _scene(2)
  invalid = ~np.all(xyz != 0, axis=-1)
  noisy = xyz.copy()
  rng = np.random.default_rng(0)
  # Invalid = any zero coordinate; fill the other coordinates with junk, and NaN some pixels outright.
  junk = rng.normal(size=(invalid.sum(), 3)).astype(np.float32)
  junk[:, 0] = 0
  noisy[invalid] = junk
  noisy[0, :5] = np.nan
  np.testing.assert_array_equal(fpfh.FpfhBackbone()(noisy[None]), fpfh.FpfhBackbone()(xyz[None]))


def test_rotation_about_camera_nearly_invariant():
  xyz = _scene(3)
  valid = np.all(xyz != 0, axis=-1)
  pts = xyz[valid].astype(np.float64)
  a, b = 0.7, -0.4  # rotate about z then x; the camera (origin) stays fixed
  rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
  rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
  f0 = fpfh.fpfh_points(pts)
  f1 = fpfh.fpfh_points(pts @ (rx @ rz).T)
  l1 = np.abs(f0 - f1).sum(-1) / 33.0
  assert np.median(l1) < 1e-3 and np.mean(l1 < 0.05) > 0.97, (np.median(l1), np.mean(l1 < 0.05))
  # Radii are in point spacings, so the unit does not matter: the same scene in millimetres gives the same features.
  np.testing.assert_allclose(fpfh.fpfh_points(pts * 1000.0), f0, atol=1e-3 * fpfh.FpfhParams().scale)
  # The same measure does see a change of shape: depth stretched by 20% moves the median by ~4%.
  f2 = fpfh.fpfh_points(pts * np.array([1, 1, 1.2]))
  assert np.median(np.abs(f0 - f2).sum(-1) / 33.0) > 0.02


def test_degenerate_clouds():
  empty = np.zeros((1, 224, 224, 3), np.float32)
  np.testing.assert_array_equal(fpfh.FpfhBackbone()(empty), 0)
  lone = empty.copy()
  lone[0, 10, 10] = (0.01, 0.01, 0.4)
  assert np.all(fpfh.FpfhBackbone()(lone) == 0)
  pair = lone.copy()
  pair[0, 10, 11] = (0.0105, 0.01, 0.4)
  out = fpfh.FpfhBackbone()(pair)
  assert np.all(np.isfinite(out)) and out[0, 10, 10].sum() > 0 and out[0, 20, 20].sum() == 0
  far = pair.copy()
  far[0, 200, 200] = (0.05, 0.05, 0.4)  # no neighbour inside the FPFH radius: Open3D's histogram is empty
  out = fpfh.FpfhBackbone()(far)
  assert out[0, 200, 200].sum() == 0 and out[0, 10, 10].sum() > 0
  coincident = empty.copy()
  coincident[0, :3, :3] = (0.01, 0.01, 0.4)  # spacing 0
  assert np.all(fpfh.FpfhBackbone()(coincident) == 0)


def test_bad_input_and_config():
  with pytest.raises(ValueError, match=r'\[B,224,224,3\]'):
    fpfh.FpfhBackbone()(np.zeros((224, 224, 3), np.float32))
  config = ml_collections.ConfigDict({'fpfh': {'feature_radius': 8.0, 'feature_max_nn': 50}})
  bb = fpfh.make_backbone(config)
  assert (bb.name, bb.dim) == ('fpfh', 33)
  assert bb.params == fpfh.FpfhParams(feature_radius=8.0, feature_max_nn=50)
  assert bb.meta['feature_radius'] == 8.0
  assert fpfh.make_backbone(ml_collections.ConfigDict()).params == fpfh.FpfhParams()
  with pytest.raises(ValueError, match='radius_mm'):
    fpfh.make_backbone(ml_collections.ConfigDict({'fpfh': {'radius_mm': 2.0}}))
  with pytest.raises(ValueError, match='positive'):
    fpfh.FpfhParams(normal_radius=0.0)
  with pytest.raises(ValueError, match='positive'):
    fpfh.FpfhParams(spacing=-1.0)
  with pytest.raises(ValueError, match='positive'):
    fpfh.FpfhParams(scale=0.0)


def test_fixed_spacing_equals_measured():
  xyz = _scene(4)
  pts = xyz[np.all(xyz != 0, axis=-1)].astype(np.float64)
  dist, _ = scipy.spatial.cKDTree(pts).query(pts, k=2)
  np.testing.assert_allclose(fpfh.fpfh_points(pts, fpfh.FpfhParams(spacing=float(np.median(dist[:, 1])))),
                             fpfh.fpfh_points(pts), atol=1e-4 * fpfh.FpfhParams().scale)
