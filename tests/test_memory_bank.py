"""SPEC §3: normalisation, coreset, sharded kNN, unimodal scoring and bank storage, against NumPy/torch/sklearn."""
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from sklearn.random_projection import johnson_lindenstrauss_min_dim

from g2sf_jax import memory_bank as mb
from g2sf_jax import distributed
from g2sf_jax.ops import select

MESH = distributed.make_mesh()


# ---------------------------------------------------------------------------------------------- normalisation

def test_normaliser_fit_matches_numpy():
  rng = np.random.default_rng(0)
  bank = (rng.standard_normal((1003, 17)) * 3 + 1.5).astype(np.float32)
  norm = mb.Normaliser.fit(bank, chunk_rows=100)
  x64 = bank.astype(np.float64)
  np.testing.assert_allclose(norm.mean, x64.mean(), rtol=1e-12)
  np.testing.assert_allclose(norm.std, x64.std(ddof=1), rtol=1e-12)
  want = (bank - np.float32(x64.mean())) / np.float32(x64.std(ddof=1))
  np.testing.assert_array_equal(norm(bank), want)
  np.testing.assert_array_equal(mb.Normaliser.identity()(bank), bank)


# ---------------------------------------------------------------------------------------------- coreset

def _numpy_greedy(z32: np.ndarray, k: int, fp16: bool) -> np.ndarray:
  """The reference's loop (SPEC §3.2), transliterated."""
  dt = np.float16 if fp16 else np.float32
  mind = np.sqrt(np.sum(np.square(z32 - z32[0]), axis=1)).astype(dt)
  z = z32.astype(dt)
  idx, last = [0], 0
  for _ in range(k - 1):
    diff = (z.astype(np.float32) - z[last].astype(np.float32)).astype(dt).astype(np.float32)
    mind = np.minimum(mind, np.sqrt(np.sum(diff * diff, axis=1)).astype(dt))
    last = int(np.argmax(mind))
    idx.append(last)
    mind[last] = 0
  return np.array(idx)


def test_projection_dim_and_matrix():
  for n in (1000, 191_296, 765_184):
    assert mb.projection_dim(n, 0.9) == int(johnson_lindenstrauss_min_dim(n, eps=0.9))
  assert mb.projection_dim(765_184) == 334
  m = mb.sparse_projection_matrix(jax.random.key(1), 1152, 334)
  scale = np.sqrt(np.sqrt(1152)) / np.sqrt(334)
  np.testing.assert_allclose(np.unique(m), [-scale, 0, scale], rtol=1e-6)
  density = (m != 0).mean()
  assert abs(density - 1 / np.sqrt(1152)) < 0.003
  assert abs((m > 0).mean() - (m < 0).mean()) < 0.003


@pytest.mark.parametrize('fp16', [False, True])
def test_greedy_on_integer_grid_matches_numpy(fp16):
  # Small integer coordinates: every sum of squares is exact, so any summation order gives the same distances,
  # and float16 rounding produces many exact ties (resolved to the first index).
  z = np.random.default_rng(2).integers(-6, 7, size=(400, 5)).astype(np.float32)
  dist0 = np.sqrt(np.sum(np.square(z - z[0]), axis=1))
  got = np.asarray(mb.greedy_k_center(z, dist0, k=60, fp16=fp16, mesh=MESH))
  np.testing.assert_array_equal(got, _numpy_greedy(z, 60, fp16))
  assert got[0] == 0 and len(set(got.tolist())) == 60


def test_greedy_reports_progress_in_calls_that_change_nothing():
  z = np.random.default_rng(4).standard_normal((3000, 8)).astype(np.float32)
  dist0 = np.sqrt(np.sum(np.square(z - z[0]), axis=1))
  seen = []
  chunked = mb.greedy_k_center(z, dist0, k=300, fp16=True, mesh=MESH, seconds_per_call=1e-4,  # many small calls
                               progress=lambda done, total: seen.append((done, total)))
  assert len(seen) > 3 and seen[-1] == (300, 300) and all(a[0] < b[0] for a, b in zip(seen, seen[1:]))
  one_call = mb.greedy_k_center(z, dist0, k=300, fp16=True, mesh=MESH, seconds_per_call=1e9)
  np.testing.assert_array_equal(chunked, one_call)
  np.testing.assert_array_equal(chunked, _numpy_greedy(z, 300, True))


@pytest.mark.parametrize('fp16', [False, True])
def test_coreset_matches_numpy_given_projection(fp16):
  rng = np.random.default_rng(3)
  bank = rng.standard_normal((1500, 200)).astype(np.float32) * 2 + 0.3
  norm = mb.Normaliser.fit(bank)
  key = jax.random.key(7)
  idx = mb.coreset(bank, 0.1, 0.9, key, fp16=fp16, normaliser=norm, chunk_rows=256, mesh=MESH)
  assert mb.projection_dim(1500, 0.9) == 180
  matrix = mb.sparse_projection_matrix(key, 200, 180)
  z32 = (norm(bank).astype(np.float64) @ matrix.astype(np.float64)).astype(np.float32)
  z, dist0 = mb.project(bank, matrix, norm, chunk_rows=256)
  np.testing.assert_allclose(z, z32, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dist0, np.sqrt(np.sum(np.square(z - z[0]), axis=1)), rtol=1e-6)
  assert idx.shape == (150,) and idx.dtype == np.int32
  np.testing.assert_array_equal(idx, _numpy_greedy(z, 150, fp16))


def test_coreset_of_low_dimensional_bank_uses_the_rows_themselves():
  # 24 dims < the JL dimension (180 for 1500 rows): no projection up, the greedy sees the normalised rows exactly.
  bank = np.random.default_rng(5).standard_normal((1500, 24)).astype(np.float32) * 2 + 0.3
  norm = mb.Normaliser.fit(bank)
  idx = mb.coreset(bank, 0.1, 0.9, jax.random.key(7), fp16=False, normaliser=norm, chunk_rows=256, mesh=MESH)
  np.testing.assert_array_equal(idx, _numpy_greedy(norm(bank), 150, fp16=False))
  other_key = mb.coreset(bank, 0.1, 0.9, jax.random.key(8), fp16=False, normaliser=norm, chunk_rows=256, mesh=MESH)
  np.testing.assert_array_equal(other_key, idx)  # nothing random is left


# ---------------------------------------------------------------------------------------------- kNN search

def _brute_knn(q: np.ndarray, b: np.ndarray, k: int):
  d = np.sqrt(((q[:, None, :].astype(np.float64) - b[None].astype(np.float64)) ** 2).sum(-1))
  i = np.argsort(d, axis=1, kind='stable')[:, :k]
  return np.take_along_axis(d, i, axis=1), i


def _knn_data(rows: int = 301):
  rng = np.random.default_rng(4)
  bank = rng.standard_normal((rows, 16)).astype(np.float32)
  bank[200] = bank[10]   # exact duplicates: ties must go to the lower index
  bank[250] = bank[10]
  bank[rows - 1] = bank[10]  # (in the last block and, on 8 devices, on the last shard)
  queries = rng.standard_normal((70, 16)).astype(np.float32)
  queries[:5] = bank[10] + 1e-3 * rng.standard_normal((5, 16)).astype(np.float32)
  return queries, bank


def test_knn_matches_brute_force():
  queries, bank = _knn_data()
  dist, idx = mb.knn_search(queries, bank, k=7, mesh=MESH, query_chunk=32)
  want_d, want_i = _brute_knn(queries, bank, 7)
  np.testing.assert_array_equal(idx, want_i)
  np.testing.assert_allclose(dist, want_d, rtol=1e-6, atol=1e-7)
  assert idx[0, :3].tolist() == [10, 200, 250]
  # k = whole bank: every row comes back exactly once
  _, idx_all = mb.knn_search(queries[:3], bank, k=301, mesh=MESH)
  assert all(sorted(r.tolist()) == list(range(301)) for r in idx_all)


_EIGHT_DEVICES = textwrap.dedent('''
  import os, sys
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  import jax, numpy as np
  assert jax.device_count() == 8, jax.devices()
  from g2sf_jax import memory_bank as mb, distributed
  d = np.load(sys.argv[1])
  mesh = distributed.make_mesh()
  bank = mb.place_bank(d['bank'], mesh)
  assert bank.rows.shape[0] % (32 * 8) == 0 and len(bank.rows.sharding.device_set) == 8
  dist, idx = mb.knn_search(d['queries'], bank, k=7, query_chunk=32)
  np.savez(sys.argv[2], dist=dist, idx=idx)
''')


@pytest.mark.parametrize('rows', [301, 16_000])
def test_knn_one_vs_eight_devices(tmp_path, rows):
  # 16,000 rows: the candidate selection prunes blocks of 32 rows on one device, of 16 on each of eight.
  queries, bank = _knn_data(rows)
  np.savez(tmp_path / 'in.npz', queries=queries, bank=bank)
  (tmp_path / 'run.py').write_text(_EIGHT_DEVICES)
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(Path(__file__).resolve().parents[1]))
  env.pop('XLA_FLAGS', None)
  subprocess.run([sys.executable, str(tmp_path / 'run.py'), str(tmp_path / 'in.npz'), str(tmp_path / 'out.npz')],
                 check=True, env=env, timeout=300)
  eight = np.load(tmp_path / 'out.npz')
  dist, idx = mb.knn_search(queries, bank, k=7, mesh=distributed.make_mesh(devices=jax.devices()[:1]))
  np.testing.assert_array_equal(eight['idx'], idx)
  np.testing.assert_array_equal(eight['dist'], dist)
  np.testing.assert_array_equal(idx, _brute_knn(queries, bank, 7)[1])
  assert idx[0, :3].tolist() == [10, 200, 250]
  if rows > 301:
    assert select.block_size(16_000, 15, max_block=32, min_block=16) == 32         # k + 8 candidates
    assert select.block_size(16_128 // 8, 15, max_block=32, min_block=16) == 16    # padded to 8 × 32 rows


def test_knn_rejects_bad_k():
  with pytest.raises(ValueError, match='k=5'):
    mb.knn_search(np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32), k=5, mesh=MESH)


def test_placing_a_bank_needs_the_callers_mesh():
  with pytest.raises(ValueError, match='pass the mesh'):
    mb.knn_search(np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32), k=1)
  placed = mb.place_bank(np.zeros((4, 3), np.float32), MESH)
  assert mb.place_bank(placed) is placed and mb.knn_search(np.zeros((2, 3), np.float32), placed, k=1)[1].shape == (2, 1)


# ---------------------------------------------------------------------------------------------- scoring

def _pil_knn_blur(m: np.ndarray) -> np.ndarray:
  mx = m.max()
  u8 = (m / mx * np.float32(255)).astype(np.float32).astype(np.uint8)
  out = np.asarray(Image.fromarray(u8, mode='L').filter(ImageFilter.GaussianBlur(radius=4)))
  return out.astype(np.float32) / np.float32(255) * mx


def test_upsample_bilinear_matches_torch():
  x = np.random.default_rng(5).random((56, 56)).astype(np.float32)
  want = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], size=224, mode='bilinear',
                                         align_corners=False)[0, 0].numpy()
  np.testing.assert_allclose(np.asarray(mb.upsample_bilinear(x, 224)), want, rtol=1e-6, atol=1e-7)


def test_unimodal_scores_vs_numpy_transliteration():
  rng = np.random.default_rng(6)
  dim = 6
  coreset = rng.standard_normal((80, dim)).astype(np.float32)
  feats = (coreset[rng.integers(0, 80, 3136)] + 0.3 * rng.standard_normal((3136, dim))).astype(np.float32)
  feats[1234] += 4.0   # one clearly anomalous patch
  res = mb.unimodal_scores(feats, coreset, MESH, num_anchors=20)

  # SPEC §3.3 in NumPy (float64 distances)
  dist = np.sqrt(((feats[:, None].astype(np.float64) - coreset[None]) ** 2).sum(-1))
  min_idx = dist.argmin(1)
  min_val = dist.min(1)
  anchor = np.argsort(dist, axis=1, kind='stable')[:, :20]
  anchor[:, 0] = min_idx
  p = int(min_val.argmax())
  assert p == 1234
  m_star = coreset[min_idx[p]]
  nn = np.argsort(np.sqrt(((m_star[None] - coreset) ** 2).sum(-1)), kind='stable')[:3]
  knn = np.sqrt(((feats[p][None] - coreset[nn[1:]]) ** 2).sum(-1))
  w = 1 - np.exp(min_val[p] / np.sqrt(dim)) / (np.exp(knn / np.sqrt(dim)).sum() + 1e-5)
  np.testing.assert_allclose(res.image_score, w * min_val[p], rtol=1e-5)
  assert 0 < w < 1
  np.testing.assert_allclose(res.min_dist, min_val, rtol=1e-6)
  np.testing.assert_array_equal(res.min_idx, min_idx)
  np.testing.assert_array_equal(res.anchor_idx, anchor)
  up = torch.nn.functional.interpolate(torch.from_numpy(res.min_dist.reshape(1, 1, 56, 56)), size=224,
                                       mode='bilinear', align_corners=False)[0, 0].numpy()
  want_map = _pil_knn_blur(up)
  assert res.map224.shape == (224, 224)
  np.testing.assert_allclose(res.map224, want_map, rtol=0, atol=float(up.max()) / 255 * 1.0001)
  assert (res.map224 == want_map).mean() > 0.99
  # batched = per-sample
  batch = mb.unimodal_scores_batch(np.stack([feats, feats[::-1]]), coreset, MESH, blur='none')
  np.testing.assert_array_equal(batch[0].anchor_idx, res.anchor_idx)
  np.testing.assert_array_equal(batch[1].min_dist, res.min_dist[::-1])


def test_build_save_load_round_trip(tmp_path):
  rng = np.random.default_rng(8)
  img = rng.standard_normal((400, 12)).astype(np.float32) * 5 + 2
  pcd = rng.standard_normal((500, 9)).astype(np.float32)
  banks = {'img': mb.build(img, True, 0.1, 0.9, jax.random.key(0), mesh=MESH),
           'pcd': mb.build(pcd, False, 0.1, 0.9, jax.random.key(0), fp16=False, mesh=MESH)}
  assert banks['img'].coreset.shape == (40, 12) and banks['pcd'].coreset.shape == (50, 9)
  np.testing.assert_allclose(banks['img'].coreset, (img[banks['img'].coreset_idx] - img.mean()) / img.std(ddof=1),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(banks['pcd'].coreset, pcd[banks['pcd'].coreset_idx])
  mb.save(tmp_path / 'bagel', banks, {'class': 'bagel'})
  loaded, meta = mb.load(tmp_path / 'bagel')
  assert meta['class'] == 'bagel' and meta['modalities'] == ['img', 'pcd']
  for name in banks:
    np.testing.assert_array_equal(loaded[name].coreset, banks[name].coreset)
    np.testing.assert_array_equal(loaded[name].coreset_idx, banks[name].coreset_idx)
    assert loaded[name].normaliser == banks[name].normaliser
  with pytest.raises(FileNotFoundError, match='make it'):
    mb.load(tmp_path / 'nope', how_to_make='make it')


_GREEDY_DEVICES = textwrap.dedent('''
  import os, sys
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  import jax, numpy as np
  from g2sf_jax import distributed, memory_bank as mb
  z = np.random.default_rng(0).standard_normal((1003, 24)).astype(np.float32)  # not a multiple of 8 rows
  z[500] = z[20]  # an exact tie between rows on different devices
  dist0 = np.sqrt(np.sum(np.square(z - z[0]), axis=1))
  out = {}
  for fp16 in (True, False):
    for n in (1, 8):
      mesh = distributed.make_mesh(devices=jax.devices()[:n])
      for tile in (mb.GREEDY_TILE, 48):  # one tile per device; several tiles per device, padded rows in the last
        out[f'{fp16}-{n}-{tile}'] = mb.greedy_k_center(z, dist0, k=150, fp16=fp16, mesh=mesh, seconds_per_call=0.01,
                                                       tile=tile)
  np.savez(sys.argv[1], **out)
''')


def test_greedy_coreset_picks_the_same_rows_on_one_and_eight_devices(tmp_path):
  (tmp_path / 'run.py').write_text(_GREEDY_DEVICES)
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(Path(__file__).resolve().parents[1]))
  env.pop('XLA_FLAGS', None)
  subprocess.run([sys.executable, str(tmp_path / 'run.py'), str(tmp_path / 'out.npz')], check=True, env=env,
                 timeout=300)
  got = np.load(tmp_path / 'out.npz')
  z = np.random.default_rng(0).standard_normal((1003, 24)).astype(np.float32)
  z[500] = z[20]
  assert len(got.files) == 8
  for fp16 in (True, False):
    want = _numpy_greedy(z, 150, fp16)
    for n in (1, 8):
      for tile in (mb.GREEDY_TILE, 48):
        np.testing.assert_array_equal(got[f'{fp16}-{n}-{tile}'], want, err_msg=f'fp16={fp16}, {n} devices, tile {tile}')


def test_greedy_tile_is_cache_sized_on_cpu_and_one_per_device_on_accelerators():
  fake_mesh = lambda platform, n: types.SimpleNamespace(
      size=n, devices=np.array([types.SimpleNamespace(platform=platform)] * n))
  assert mb._greedy_tile(765_184, fake_mesh('cpu', 1), None) == mb.GREEDY_TILE
  assert mb._greedy_tile(765_184, fake_mesh('gpu', 1), None) == 765_184
  assert mb._greedy_tile(765_184, fake_mesh('tpu', 8), None) == 95_648
  assert mb._greedy_tile(1003, fake_mesh('cpu', 8), None) == 126  # a small bank: one tile per device anywhere
  assert mb._greedy_tile(765_184, fake_mesh('gpu', 1), 48) == 48  # an explicit tile wins
