"""kNN and grouping against a NumPy reference written here (algorithms.md §2.2)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
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


def _scan(side: int, seed: int) -> np.ndarray:
  """Valid points of an organised side² scan in raster order (a bumpy sheet seen through a disk)."""
  yy, xx = np.mgrid[:side, :side].astype(np.float32)
  inside = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 <= (0.45 * side) ** 2
  z = np.sin(xx / 5) * np.cos(yy / 4) + 0.01 * np.random.default_rng(seed).standard_normal((side, side))
  return np.stack([xx * 0.4, yy * 0.4, z], -1)[inside].astype(np.float32)


def _inexact_share(points, valid, queries, k):
  planes = tuple(jnp.asarray(points)[..., i] for i in range(3))
  _, exact = knn._boxed(planes, jnp.asarray(valid), jnp.asarray(queries), k)
  return 1 - float(np.mean(np.asarray(exact)))


def test_box_search_on_organised_scans_redoes_inexact_queries():
  # Two scans of ~6k points in an 8,192 bucket (256 boxes), FPS centres as queries. 16-NN: every query is provably
  # exact from the 32 nearest boxes. 150-NN: ~16% are not; with room for a quarter of the queries they alone are
  # redone by the full search. Both equal the NumPy oracle.
  clouds = [_scan(100, 0), _scan(96, 1)]
  points, valid = buckets.pad_batch(clouds, buckets=(8192,))
  centres = np.asarray(fps.farthest_point_sample(points, valid, 200))
  queries = np.stack([c[i] for c, i in zip(clouds, centres)])
  assert _inexact_share(points, valid, queries, 16) == 0
  share = _inexact_share(points, valid, queries, 150)
  assert 0.05 < share < 0.25
  planes = tuple(jnp.asarray(points)[..., i] for i in range(3))
  redone = jax.jit(knn._with_fallback, static_argnums=(3, 4))(planes, jnp.asarray(valid), jnp.asarray(queries),
                                                                150, 4)
  for k, got in ((16, knn.knn_indices(points, valid, queries, 16)), (150, redone)):
    for b, cloud in enumerate(clouds):
      np.testing.assert_array_equal(np.asarray(got)[b], numpy_knn(cloud, queries[b], k))


def test_box_search_falls_back_whole_on_ties_few_points_and_nan():
  # A doubled lattice (every distance tied: bounds equal k-th distances), a cloud with fewer valid points than k,
  # and a scan with NaN points (never neighbours): too many inexact queries, so the whole batch is redone.
  grid = np.stack(np.meshgrid(*[np.arange(12, dtype=np.float32)] * 3, indexing='ij'), -1).reshape(-1, 3)
  lattice = np.concatenate([grid, grid, grid[:100]])                       # 3,556 points
  scan = _scan(80, 2)
  scan[::7] = np.nan
  clouds = [lattice, grid[:5], scan]
  points, valid = buckets.pad_batch(clouds, buckets=(8192,))
  queries = np.stack([lattice[[0, 13, 500, 1727, 3000]], grid[[0, 1, 2, 3, 4]] + 0.25, scan[[1, 100, 900, 2000, 3001]]])
  assert _inexact_share(points, valid, queries, 24) > 1 / knn._FALLBACK_SHARE
  got = np.asarray(knn.knn_indices(points, valid, queries, 24))
  np.testing.assert_array_equal(got[0], numpy_knn(lattice, queries[0], 24))
  np.testing.assert_array_equal(got[1], numpy_knn(grid[:5], queries[1], 24))
  finite = np.flatnonzero(np.isfinite(scan).all(axis=1))
  np.testing.assert_array_equal(got[2], finite[numpy_knn(scan[finite], queries[2], 24)])


def test_box_search_over_several_query_chunks():
  # 2 clouds × 300 queries, 512 rows per step: 2 chunks of 150 queries per cloud; each row keeps its own cloud's
  # points.
  assert knn._balanced(300, knn._ROWS_PER_CHUNK // 2) == 150 and knn._balanced(301, 256) == 151
  clouds = [_scan(100, 3), _scan(96, 4)]
  points, valid = buckets.pad_batch(clouds, buckets=(8192,))
  centres = np.asarray(fps.farthest_point_sample(points, valid, 300))
  queries = np.stack([c[i] for c, i in zip(clouds, centres)])
  assert _inexact_share(points, valid, queries, 16) == 0
  got = np.asarray(knn.knn_indices(points, valid, queries, 16))
  for b, cloud in enumerate(clouds):
    np.testing.assert_array_equal(got[b], numpy_knn(cloud, queries[b], 16))


_SHARDED = textwrap.dedent('''
    import os, re, sys
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from g2sf_jax.ops import knn
    from tests.ops.test_knn import _scan
    from g2sf_jax.ops import buckets
    points, valid = buckets.pad_batch([_scan(96, seed) for seed in range(8)], buckets=(8192,))
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ('data',)), PartitionSpec('data'))
    placed = [jax.device_put(x, sharding) for x in (points, valid)]
    group = jax.jit(knn.group, static_argnames=('num_group', 'group_size'))
    hlo = group.lower(*placed, num_group=64, group_size=16).compile().as_text()
    gathers = re.findall(r'(all-gather|all-to-all|collective-permute|reduce-scatter)(-start)?\\(', hlo)
    same = all(np.array_equal(a, b) for a, b in zip(group(*placed, num_group=64, group_size=16),
                                                    group(points, valid, num_group=64, group_size=16)))
    print(len(gathers), same)
''')


def test_sharded_batch_is_grouped_where_it_lies():
  # 8 clouds over 8 forced host devices (the box search path): the compiled program moves no point data between
  # devices (only the fallback's one-bit "any cloud overflowed" is reduced), and gives the one-device result.
  root = Path(__file__).resolve().parents[2]
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(root))
  out = subprocess.run([sys.executable, '-c', _SHARDED], check=True, env=env, cwd=root, timeout=600,
                       capture_output=True, text=True).stdout.split()
  assert out == ['0', 'True']


def test_one_neighbour_and_a_nan_query():
  # k = 1 on both paths (the box search needs N > 4,096); a NaN query is at infinity from every point, so it gets
  # the lowest valid indices, as a stable sort of its distances does.
  noise = np.random.default_rng(6).normal(size=(500, 3)).astype(np.float32)
  for cloud, bucket in ((_scan(100, 5), 8192), (noise, 512)):
    points, valid = buckets.pad_batch([cloud], buckets=(bucket,))
    queries = np.concatenate([cloud[[3, 400, 77]], np.full((1, 3), np.nan, np.float32)])[None]
    got = np.asarray(knn.knn_indices(points, valid, queries, 1))[0]
    np.testing.assert_array_equal(got[:3], numpy_knn(cloud, queries[0, :3], 1))
    assert got[3, 0] == 0
