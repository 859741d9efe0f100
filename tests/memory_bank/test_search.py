"""algorithms.md §3.3 step 1: the sharded nearest-neighbour search against brute force, one vs eight devices."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from g2sf_jax import distributed
from g2sf_jax import memory_bank as mb
from g2sf_jax.ops import select

MESH = distributed.make_mesh()
REPO = Path(__file__).resolve().parents[2]


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
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO))
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
