"""FPS against a plain NumPy transliteration of the pointnet2_ops kernel (algorithms.md §2.2), written here."""
import numpy as np
import pytest

from g2sf_jax.ops import buckets
from g2sf_jax.ops import fps


def kernel_fps(points: np.ndarray, num_samples: int) -> np.ndarray:
  """The CUDA kernel's loop, one thread: start 0, temp 1e10, skip |p|² <= 1e-3, strict '>' keeps the first max."""
  p = points.astype(np.float32)
  temp = np.full(len(p), 1e10, np.float32)
  idx = [0]
  old = 0
  for _ in range(1, num_samples):
    x1, y1, z1 = p[old]
    best, besti = np.float32(-1), 0
    for k in range(len(p)):
      x2, y2, z2 = p[k]
      if x2 * x2 + y2 * y2 + z2 * z2 <= np.float32(1e-3):
        continue
      d = (x2 - x1) * (x2 - x1) + (y2 - y1) * (y2 - y1) + (z2 - z1) * (z2 - z1)
      d2 = min(d, temp[k])
      temp[k] = d2
      if d2 > best:
        best, besti = d2, k
    old = besti
    idx.append(old)
  return np.array(idx, np.int32)


def run(clouds, num_samples):
  points, valid = buckets.pad_batch(clouds, buckets=(8, 64, 256, 1024))
  return np.asarray(fps.farthest_point_sample(points, valid, num_samples))


def test_random_clouds_padded_to_one_bucket():
  rng = np.random.default_rng(0)
  clouds = [rng.normal(size=(n, 3)).astype(np.float32) * s for n, s in ((700, 1.0), (1000, 30.0), (333, 0.2))]
  got = run(clouds, 48)
  assert got.shape == (3, 48) and got.dtype == np.int32
  for b, cloud in enumerate(clouds):
    np.testing.assert_array_equal(got[b], kernel_fps(cloud, 48))
    assert got[b].max() < len(cloud)  # never a padded point


def test_duplicates_and_exact_ties():
  # Integer lattice with every point twice: many exactly equal float32 distances.
  grid = np.stack(np.meshgrid(*[np.arange(1, 5, dtype=np.float32)] * 3, indexing='ij'), -1).reshape(-1, 3)
  cloud = np.concatenate([grid, grid[::-1]])
  got = run([cloud], 40)
  np.testing.assert_array_equal(got[0], kernel_fps(cloud, 40))


def test_ties_across_argmax_blocks_at_a_size_that_is_not_a_block_multiple():
  # Each lattice point has a twin 164 indices later, in another 128-point block of the argmax; the skipped points
  # near the origin between them must stay unpicked. N = 228 is not padded by a bucket here.
  grid = np.stack(np.meshgrid(*[np.arange(1, 5, dtype=np.float32)] * 3, indexing='ij'), -1).reshape(-1, 3)
  near_origin = np.random.default_rng(3).uniform(-0.01, 0.01, size=(100, 3)).astype(np.float32)
  cloud = np.concatenate([grid, near_origin, grid])
  got = np.asarray(fps.farthest_point_sample(cloud[None], np.ones((1, len(cloud)), bool), 80))
  np.testing.assert_array_equal(got[0], kernel_fps(cloud, 80))
  assert not np.isin(got[0], np.arange(64, 164)).any()


def test_exact_ties_on_a_non_integer_lattice_follow_the_kernel_order():
  # Spacing 0.1 (not exact in float32): a fused multiply-add would round dx·dx + dy·dy once instead of twice and
  # break the many exact ties of this lattice differently from the kernel's order of operations.
  axis = np.arange(1, 9, dtype=np.float32) * np.float32(0.1)
  grid = np.stack(np.meshgrid(axis, axis, axis, indexing='ij'), -1).reshape(-1, 3).astype(np.float32)
  got = run([grid], 64)
  np.testing.assert_array_equal(got[0], kernel_fps(grid, 64))


def test_near_origin_points_are_skipped_but_index_zero_starts():
  rng = np.random.default_rng(1)
  cloud = rng.uniform(-1, 1, size=(200, 3)).astype(np.float32)
  cloud[::7] *= 0.01  # |p|² <= 3e-4, including index 0
  got = run([cloud], 30)
  ref = kernel_fps(cloud, 30)
  np.testing.assert_array_equal(got[0], ref)
  assert got[0, 0] == 0 and not np.isin(got[0, 1:], np.arange(0, 200, 7)).any()


def test_fewer_points_than_samples_repeats_like_the_kernel():
  cloud = np.array([[1, 0, 0], [0, 2, 0], [0, 0, 3], [1, 1, 1], [0, 2, 0]], np.float32)
  got = run([cloud], 9)
  np.testing.assert_array_equal(got[0], kernel_fps(cloud, 9))
  assert set(got[0]) == {0, 1, 2, 3}  # the duplicate point 4 is never needed


def test_all_points_skipped_gives_start_index():
  cloud = np.full((6, 3), 0.01, np.float32)
  np.testing.assert_array_equal(run([cloud], 4)[0], kernel_fps(cloud, 4))


def test_start_is_first_valid_point_when_padding_is_not_a_suffix():
  points = np.random.default_rng(2).normal(size=(1, 20, 3)).astype(np.float32)
  valid = np.ones((1, 20), bool)
  valid[0, :3] = False
  got = np.asarray(fps.farthest_point_sample(points, valid, 6))
  np.testing.assert_array_equal(got[0], kernel_fps(points[0, 3:], 6) + 3)


def test_pad_batch_layout():
  a, b = np.ones((5, 3), np.float32), 2 * np.ones((9, 3), np.float32)
  points, valid = buckets.pad_batch([a, b], buckets=(8, 16))
  assert points.shape == (2, 16, 3) and valid.sum(1).tolist() == [5, 9]
  assert valid[0, :5].all() and not points[0, 5:].any()
  p, v = buckets.pad_points(a, buckets=(4, 8))
  assert p.shape == (8, 3) and v.tolist() == [True] * 5 + [False] * 3
  with pytest.raises(ValueError, match='largest bucket 8'):
    buckets.pad_points(np.ones((9, 3)), buckets=(4, 8))
