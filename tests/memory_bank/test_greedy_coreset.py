"""algorithms.md §3.2: projection and greedy coreset against NumPy/sklearn, on one and eight devices."""
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from sklearn.random_projection import johnson_lindenstrauss_min_dim

from g2sf_jax import distributed
from g2sf_jax import memory_bank as mb
from g2sf_jax.memory_bank import greedy_coreset as coreset_lib

MESH = distributed.make_mesh()
REPO = Path(__file__).resolve().parents[2]


def _numpy_greedy(z32: np.ndarray, k: int, fp16: bool) -> np.ndarray:
  """The reference's loop (algorithms.md §3.2), transliterated."""
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
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO))
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
  assert coreset_lib._greedy_tile(765_184, fake_mesh('cpu', 1), None) == mb.GREEDY_TILE
  assert coreset_lib._greedy_tile(765_184, fake_mesh('gpu', 1), None) == 765_184
  assert coreset_lib._greedy_tile(765_184, fake_mesh('tpu', 8), None) == 95_648
  assert coreset_lib._greedy_tile(1003, fake_mesh('cpu', 8), None) == 126  # a small bank: one tile per device anywhere
  assert coreset_lib._greedy_tile(765_184, fake_mesh('gpu', 1), 48) == 48  # an explicit tile wins
