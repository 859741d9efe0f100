"""algorithms.md §1.2 / §1.3 preprocessing against known geometry and loop transliterations of the reference."""
import math

import numpy as np
import pytest

from g2sf_jax.data import preprocessing as pp
from g2sf_jax.data.transforms import valid_mask


def _plane_scene(size=120, seed=0, pitch=0.001):
  """A tilted plane z = 0.4 + 0.1 x + 0.05 y (metres) with 0.2 mm noise and a 2 cm high box on it.

  Returns (xyz float32 [S,S,3], signed height above the true plane [S,S], box mask [S,S]).
  """
  rng = np.random.default_rng(seed)
  v, u = np.mgrid[0:size, 0:size]
  x, y = (u - size / 2) * pitch, (v - size / 2) * pitch
  normal = np.array([0.1, 0.05, -1.0]) / np.linalg.norm([0.1, 0.05, -1.0])  # towards the camera
  plane = np.stack([x, y, 0.4 + 0.1 * x + 0.05 * y], -1)
  box = (np.abs(u - size / 2) < size / 6) & (np.abs(v - size / 2) < size / 6)
  height = np.where(box, 0.02, 0.0) + rng.normal(0, 2e-4, (size, size))
  xyz = plane + height[..., None] * normal
  return xyz.astype(np.float32), height, box


def test_border_points_counts_corners_twice_and_drops_zeros():
  xyz = np.ones((30, 40, 3), np.float32)
  assert len(pp.border_points(xyz)) == 2 * 10 * 40 + 2 * 10 * 30
  xyz[0, 0, 2] = 0  # a corner (counted twice) with one zero coordinate
  xyz[15, 20] = 0   # not on the border
  assert len(pp.border_points(xyz)) == 2 * 10 * 40 + 2 * 10 * 30 - 2


@pytest.mark.parametrize('shape, pads', [
    ((750, 600), ((25, 25), (100, 100))),   # -> 800: rows ceil to 800, cols to 600
    ((801, 300), ((49, 50), (300, 300))),   # -> 900
    ((800, 800), ((0, 0), (0, 0))),
])
def test_pad_square_centred(shape, pads):
  image = np.random.default_rng(0).random(shape + (3,)).astype(np.float32) + 1
  out = pp.pad_square(image)
  side = shape[0] + sum(pads[0])
  assert out.shape == (side, side, 3) and side == shape[1] + sum(pads[1])
  (top, _), (left, _) = pads
  assert np.array_equal(out[top:top + shape[0], left:left + shape[1]], image)
  assert out.sum() == pytest.approx(image.sum(), rel=1e-6)  # everything else is zero
  assert pp.pad_square(image[..., 0]).shape == (side, side)
  assert np.array_equal(pp.unpad_square(out, shape), image)  # the inverse, used to map scores back to the scan


def test_remove_plane_known_plane():
  xyz, height, box = _plane_scene()
  near = (~box) & (np.arange(120)[:, None] % 7 == 3)  # lift some rows to 3 mm and 7 mm off the plane
  normal = np.array([0.1, 0.05, -1.0]) / np.linalg.norm([0.1, 0.05, -1.0])
  xyz = xyz.copy()
  xyz[near & (np.arange(120)[None, :] < 60)] += (0.003 * normal).astype(np.float32)
  xyz[near & (np.arange(120)[None, :] >= 60)] += (0.007 * normal).astype(np.float32)
  height = height + np.where(near, np.where(np.arange(120)[None, :] < 60, 0.003, 0.007), 0)
  rgb = np.full(xyz.shape, 200, np.uint8)
  out, out_rgb, problems = pp.remove_plane(xyz, rgb, seed=0)
  assert problems == []
  removed = ~valid_mask(out)
  assert removed[np.abs(height) < 0.0045].all()       # within 0.005 of the plane: gone
  assert not removed[np.abs(height) > 0.0055].any()   # farther: kept (box and the 7 mm rows)
  assert np.array_equal(out_rgb == 0, np.repeat(removed[..., None], 3, -1))
  assert np.array_equal(out[~removed], xyz[~removed])


def test_ransac_is_reproducible_with_seed():
  xyz, _, _ = _plane_scene(seed=1)
  edges = pp.border_points(xyz)
  assert np.array_equal(pp.fit_plane(edges, seed=3), pp.fit_plane(edges, seed=3))
  plane = pp.fit_plane(edges, seed=3)
  assert np.linalg.norm(plane[:3]) == pytest.approx(1.0, abs=1e-6)


def test_largest_cluster_keeps_the_biggest():
  big = np.stack(np.meshgrid(np.arange(20), np.arange(20), [0]), -1).reshape(-1, 3) * 0.001 + [0.01, 0.01, 0.4]
  small = np.stack(np.meshgrid(np.arange(8), np.arange(8), [0]), -1).reshape(-1, 3) * 0.001 + [0.2, 0.01, 0.4]
  points = np.concatenate([big, small]).astype(np.float32)
  xyz = np.zeros((1, 600, 3), np.float32)
  xyz[0, :len(points)] = points
  rgb = np.full((1, 600, 3), 9, np.uint8)
  out, out_rgb, problems = pp.largest_cluster(xyz, rgb)
  keep = valid_mask(out)[0]
  assert problems == [] and keep[:400].all() and not keep[400:].any()
  assert (out_rgb[0, 400:464] == 0).all() and (out_rgb[0, :400] == 9).all()


def test_largest_cluster_noise_label_quirk():
  # 35 points in one dense cluster, 60 isolated points: label -1 (noise) is the most populous and wins (algorithms.md
  # §1.2).
  rng = np.random.default_rng(0)
  cluster = np.stack(np.meshgrid(np.arange(7), np.arange(5), [0]), -1).reshape(-1, 3) * 0.0005 + [0.01, 0.01, 0.4]
  noise = np.stack([np.arange(60) * 0.05 + 1.0, rng.random(60) + 0.01, np.full(60, 0.4)], -1)
  xyz = np.concatenate([cluster, noise]).astype(np.float32)[None]
  out, _, _ = pp.largest_cluster(xyz, np.zeros(xyz.shape, np.uint8))
  keep = valid_mask(out)[0]
  assert not keep[:35].any() and keep[35:].all()


def test_preprocess_mvtec_on_known_plane_with_outliers():
  xyz, height, box = _plane_scene(size=150, seed=2)
  xyz[5, 70:73] += np.float32([0, 0, -0.03])  # flying pixels: a separate tiny cluster (noise), removed
  rgb = np.full(xyz.shape, 128, np.uint8)
  mask = np.zeros(xyz.shape[:2], np.uint8)
  mask[60:70, 60:70] = 255
  out = pp.preprocess_mvtec(xyz, rgb, mask, seed=0)
  assert out.xyz.shape == (200, 200, 3) and out.rgb.shape == (200, 200, 3) and out.mask.shape == (200, 200)
  top = left = 25
  kept = valid_mask(out.xyz)[top:top + 150, left:left + 150]
  assert np.array_equal(kept, box)  # exactly the box survives: plane and flying pixels are gone
  assert np.array_equal(out.xyz_orig, pp.pad_square(xyz))
  assert np.array_equal(out.mask, pp.pad_square(mask))
  assert np.array_equal(out.rgb[..., 0] > 0, valid_mask(out.xyz))
  assert out.problems == ()
  again = pp.preprocess_mvtec(xyz, rgb, mask, seed=0)
  assert np.array_equal(again.xyz, out.xyz)


def test_preprocess_mvtec_without_rgb():
  # A point-cloud-only dataset: the same cleaning of xyz (plane and flying pixels gone), no image to mask.
  xyz, _, box = _plane_scene(size=150, seed=2)
  xyz[5, 70:73] += np.float32([0, 0, -0.03])
  mask = np.zeros(xyz.shape[:2], np.uint8)
  mask[60:70, 60:70] = 255
  out = pp.preprocess_mvtec(xyz, None, mask, seed=0)
  assert out.rgb is None and out.problems == ()
  assert np.array_equal(valid_mask(out.xyz)[25:175, 25:175], box)
  assert np.array_equal(out.xyz_orig, pp.pad_square(xyz)) and np.array_equal(out.mask, pp.pad_square(mask))
  with_rgb = pp.preprocess_mvtec(xyz, np.full(xyz.shape, 128, np.uint8), mask, seed=0)
  assert np.array_equal(out.xyz, with_rgb.xyz)
  _, no_rgb, _ = pp.remove_plane(xyz, None, seed=0)
  _, no_rgb_cluster, _ = pp.largest_cluster(out.xyz, None)
  assert no_rgb is None and no_rgb_cluster is None
  empty = pp.preprocess_mvtec(np.zeros((100, 100, 3), np.float32), None, np.zeros((100, 100), np.uint8))
  assert empty.rgb is None and [p.kind for p in empty.problems] == ['empty_cloud']


def test_problems_are_recorded_not_raised():
  rgb = np.zeros((100, 100, 3), np.uint8)
  mask = np.zeros((100, 100), np.uint8)
  empty = pp.preprocess_mvtec(np.zeros((100, 100, 3), np.float32), rgb, mask)
  assert [p.kind for p in empty.problems] == ['empty_cloud'] and not empty.xyz.any()

  xyz, _, box = _plane_scene(size=100)
  nan = xyz.copy()
  nan[box] = np.nan
  out = pp.preprocess_mvtec(nan, rgb, mask)
  assert out.problems[0].kind == 'non_finite' and np.isfinite(out.xyz).all()

  few = xyz.copy()
  few[:10], few[-10:], few[:, :10], few[:, -10:] = 0, 0, 0, 0
  few[0, 40:60] = xyz[0, 40:60]  # 20 border points < ransac_n = 50: the reference crashes here
  out = pp.preprocess_mvtec(few, rgb, mask)
  assert [p.kind for p in out.problems] == ['few_border_points']
  assert '20 valid border points' in str(out.problems[0])
  assert valid_mask(out.xyz).sum() > 0  # still clustered and stored


def _depth_to_xyz_loop(depth16, dmin, dmax, pose, focal=711.11):
  """Transliteration of the reference's per-pixel loop (algorithms.md §1.3)."""
  depth = depth16.astype(np.float32) / 65535.0 * (dmax - dmin) + dmin
  h, w = depth.shape
  k4 = np.array([[focal, 0, w / 2, 0], [0, focal, h / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
  vectors = np.zeros((w * h, 4))
  n = 0
  for j in range(h):
    for i in range(w):
      vectors[n] = np.array([i, j, 1, 1 / depth[j, i]])
      n += 1
  points = np.linalg.inv(k4 @ pose) @ vectors.T
  return (depth.reshape(-1, 1) * points.T)[:, :3]


def _remove_background_loop(pc):
  """Transliteration of the reference's `remove_point_cloud_background` with its sequential ifs (algorithms.md §1.3)."""
  dz, dy = pc[256, 1] - pc[-256, 1], pc[256, 2] - pc[-256, 2]
  norm = math.sqrt(dz**2 + dy**2)
  start = np.array([0, pc[-256, 1], pc[-256, 2]])
  c, s = dy / norm, dz / norm
  rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
  q = (rot @ (pc - start).T).T
  for i in range(q.shape[0]):
    if q[i, 1] > -0.02:
      q[i, :] = -start
    if q[i, 2] > 1.8:
      q[i, :] = -start
    elif q[i, 0] > 1 or q[i, 0] < -1:
      q[i, :] = -start
  q = (rot.T @ q.T).T + start
  return q[:, [0, 2, 1]] * [0.1, -0.1, 0.1]


def _pose(seed=0):
  rng = np.random.default_rng(seed)
  angle = rng.uniform(-0.3, 0.3)
  pose = np.eye(4)
  pose[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
  pose[:3, 3] = rng.uniform(-0.1, 0.1, 3)
  return pose


def test_eyecandies_depth_to_xyz_matches_loop():
  depth16 = np.random.default_rng(0).integers(1000, 65535, (12, 16)).astype(np.uint16)
  ours = pp.eyecandies_depth_to_xyz(depth16, 0.5, 2.0, _pose())
  np.testing.assert_allclose(ours, _depth_to_xyz_loop(depth16, 0.5, 2.0, _pose()), rtol=1e-12, atol=1e-12)


def test_remove_point_cloud_background_matches_loop():
  rng = np.random.default_rng(0)
  pc = rng.normal(0, 0.6, (1024, 3)) + [0, 0, 1.0]
  pc[rng.random(1024) < 0.1, 0] *= 5   # some |q_x| > 1
  pc[rng.random(1024) < 0.1, 2] += 3   # some q_z > 1.8
  ours = pp.remove_point_cloud_background(pc.copy())
  ref = _remove_background_loop(pc.copy())
  np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)
  background = np.isclose(ref[:, 0], 0) & ~np.isclose(pc[:, 0], 0)
  assert 0 < background.sum() < 1024                         # both kinds occur
  assert not valid_mask(ref[background]).any()          # x = 0 exactly: invalid
  assert (ref[background][:, 1:] != 0).all()                 # ...but y, z are not zero (algorithms.md §1.3 note)
