import jax
import numpy as np
import pytest

from g2sf_jax.ops import select


def test_block_size_rules():
  assert select.block_size(32768, 128) == 32          # 1,024 blocks ≥ 8·128
  assert select.block_size(76544, 28, max_block=32) == 32
  assert select.block_size(1920, 28) == 8             # 240 blocks ≥ 224
  assert select.block_size(1920, 28, min_block=16) == 1
  assert select.block_size(1000, 4) == 8              # 1000 = 8·125: 16 does not divide it
  assert select.block_size(100, 20) == 1              # fewer than 8k entries: plain top_k


@pytest.mark.parametrize('n,k,block', [(2048, 16, 16), (1920, 28, 8), (76544, 28, 32), (512, 5, 4)])
def test_top_k_indices_equal_lax_top_k_with_ties_and_minus_inf(n, k, block):
  rng = np.random.default_rng(n + k)
  x = rng.integers(0, 40, size=(6, n)).astype(np.float32)  # every value repeated many times: ties everywhere
  x[0] = 0.0                                                # one row entirely tied
  x[1, : n // 2] = -np.inf                                  # padding-like entries in front
  x[2, rng.choice(n, 3 * k, replace=False)] = 50.0          # more top values than k, scattered
  x[3, -k // 2:] = 60.0                                     # the best entries in the last block
  want = np.asarray(jax.lax.top_k(x, k)[1])
  got = np.asarray(jax.jit(select.top_k_indices, static_argnums=(1, 2))(x, k, block))
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got[0], np.arange(k))      # lowest indices among equals
