"""kNN and grouping against a NumPy reference written here (SPEC §2.2)."""
import numpy as np

from g2sf_jax.ops import buckets
from g2sf_jax.ops import fps
from g2sf_jax.ops import knn
from g2sf_jax.ops import select


def numpy_knn(points: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
  """Stable sort of float32 squared distances (ties → lowest index); cyclic repeats when N < k."""
  out = []
  for q in queries.astype(np.float32):
    d = points.astype(np.float32) - q
    d2 = (d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2]
    order = np.argsort(d2, kind='stable')[:k]
    out.append(order[np.arange(k) % len(order)])
  return np.array(out, np.int32)


def test_random_padded_batch_matches_reference():
  rng = np.random.default_rng(0)
  clouds = [rng.normal(size=(n, 3)).astype(np.float32) for n in (300, 257, 90)]
  points, valid = buckets.pad_batch(clouds, buckets=(512,))
  queries = rng.normal(size=(3, 40, 3)).astype(np.float32)
  got = np.asarray(knn.knn_indices(points, valid, queries, 16))
  assert got.shape == (3, 40, 16) and got.dtype == np.int32
  for b, cloud in enumerate(clouds):
    np.testing.assert_array_equal(got[b], numpy_knn(cloud, queries[b], 16))


def test_exact_ties_pick_lowest_index():
  grid = np.stack(np.meshgrid(*[np.arange(3, dtype=np.float32)] * 3, indexing='ij'), -1).reshape(-1, 3)
  cloud = np.concatenate([grid, grid])  # every distance appears at least twice
  queries = grid[[0, 13, 26]]
  got = np.asarray(knn.knn_indices(cloud[None], np.ones((1, len(cloud)), bool), queries[None], 11))[0]
  np.testing.assert_array_equal(got, numpy_knn(cloud, queries, 11))
  assert got[1, 0] == 13 and got[1, 1] == 13 + 27  # the centre, then its duplicate


def test_block_pruning_keeps_exact_ties_and_padding():
  # 8³ lattice twice (1,024 points, every distance tied at least twice) plus padding: k = 16 prunes to the 16
  # blocks of 8 points with the smallest minima, among equal minima the earlier blocks, as a stable top_k does.
  grid = np.stack(np.meshgrid(*[np.arange(8, dtype=np.float32)] * 3, indexing='ij'), -1).reshape(-1, 3) * 0.1
  cloud = np.concatenate([grid, grid])
  assert select.block_size(2048, 16) == 16
  points, valid = buckets.pad_batch([cloud, cloud[:700]], buckets=(2048,))
  queries = np.stack([grid[[0, 77, 300, 511]], grid[[5, 64, 200, 400]] + 0.05])
  got = np.asarray(knn.knn_indices(points, valid, queries, 16))
  np.testing.assert_array_equal(got[0], numpy_knn(cloud, queries[0], 16))
  np.testing.assert_array_equal(got[1], numpy_knn(cloud[:700], queries[1], 16))


def test_fewer_valid_points_than_k_repeat_the_nearest():
  cloud = np.array([[0, 0, 0], [1, 0, 0], [3, 0, 0], [6, 0, 0]], np.float32)
  points, valid = buckets.pad_batch([cloud[:3]], buckets=(4,))
  got = np.asarray(knn.knn_indices(points, valid, np.array([[[2.9, 0, 0]]], np.float32), 7))[0, 0]
  np.testing.assert_array_equal(got, [2, 1, 0, 2, 1, 0, 2])  # hand-computed; index 3 is padding


def test_chunked_path_with_remainder():
  rng = np.random.default_rng(1)
  cloud = rng.uniform(-1, 1, size=(300_000, 3)).astype(np.float32)
  queries = cloud[rng.choice(len(cloud), 70, replace=False)]  # 2**22 // 300k = 13 per chunk, remainder 5
  got = np.asarray(knn.knn_indices(cloud[None], np.ones((1, len(cloud)), bool), queries[None], 8))[0]
  np.testing.assert_array_equal(got, numpy_knn(cloud, queries, 8))


def test_group_is_fps_centres_and_relative_neighbours():
  rng = np.random.default_rng(2)
  clouds = [rng.normal(size=(n, 3)).astype(np.float32) for n in (200, 150)]
  points, valid = buckets.pad_batch(clouds, buckets=(256,))
  neighborhood, centers = knn.group(points, valid, num_group=12, group_size=10)
  assert neighborhood.shape == (2, 12, 10, 3) and centers.shape == (2, 12, 3)
  idx = np.asarray(fps.farthest_point_sample(points, valid, 12))
  for b, cloud in enumerate(clouds):
    np.testing.assert_array_equal(np.asarray(centers[b]), cloud[idx[b]])
    nn = numpy_knn(cloud, cloud[idx[b]], 10)
    np.testing.assert_array_equal(np.asarray(neighborhood[b]), cloud[nn] - cloud[idx[b]][:, None])
    np.testing.assert_array_equal(np.asarray(neighborhood[b, :, 0]), 0)  # the centre is its own nearest
