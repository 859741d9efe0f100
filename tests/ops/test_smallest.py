"""Bisection, prefix-sum and sorting-network selection against `lax.top_k` and NumPy's stable sort."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from g2sf_jax.ops import smallest


def _keys(m: int, r: int, seed: int) -> np.ndarray:
  """[M, R] non-negative keys with ties everywhere, +inf runs, zeros and one column entirely tied."""
  rng = np.random.default_rng(seed)
  keys = rng.integers(0, 30, size=(m, r)).astype(np.float32) * 0.25
  keys[rng.random((m, r)) < 0.05] = 0.0
  keys[: m // 3, 0] = np.inf                       # excluded entries in front
  keys[:, 1] = 7.0                                 # one column all equal
  keys[:, 2] = rng.random(m).astype(np.float32)    # one column of distinct values
  return keys


def test_bitonic_stages():
  assert smallest._bitonic_partners(2) == [1]
  assert smallest._bitonic_partners(8) == [1, 3, 1, 7, 2, 1]


def _stable_smallest(keys: np.ndarray, k: int) -> np.ndarray:
  return np.argsort(keys, axis=0, kind='stable')[:k]


@pytest.mark.parametrize('m,r,k', [(1024, 6, 128), (896, 5, 33), (300, 4, 24), (40, 3, 5), (64, 4, 64), (30, 4, 1)])
def test_kth_and_sorted_k_smallest_equal_top_k(m, r, k):
  keys = _keys(m, r, m + k)
  kth = np.asarray(jax.jit(smallest.kth_smallest, static_argnums=1)(keys, k))
  np.testing.assert_array_equal(kth, np.sort(keys, axis=0)[k - 1])

  @jax.jit
  def select(keys):
    members = smallest.first_k(keys, k, smallest.kth_smallest(keys, k))
    return members, smallest.sort_by_key(jnp.take_along_axis(keys, members, axis=0), members)

  members, ordered = (np.asarray(x) for x in select(keys))
  want = _stable_smallest(keys, k)
  np.testing.assert_array_equal(ordered, want)
  np.testing.assert_array_equal(ordered, np.asarray(jax.lax.top_k(-keys.T, k)[1]).T)
  np.testing.assert_array_equal(members, np.sort(want, axis=0))   # first_k: the same set, in position order
  np.testing.assert_array_equal(ordered[:, 1], np.arange(k))       # all tied: the lowest positions


@pytest.mark.parametrize('m,k,block', [(2048, 16, 16), (1920, 28, 8), (512, 5, 4)])
def test_block_pruned_smallest_k_equals_top_k(m, k, block):
  keys = _keys(m, 5, m)
  keys[:, 4] = np.inf                                                # nothing valid: the first k positions
  keys[-k // 2:, 3] = 0.0                                            # the best keys in the last block
  got, kth = jax.jit(smallest.smallest_k, static_argnums=(1, 2))(keys, k, block)
  np.testing.assert_array_equal(np.asarray(got), _stable_smallest(keys, k))
  np.testing.assert_array_equal(np.asarray(kth), np.sort(keys, axis=0)[k - 1])
  np.testing.assert_array_equal(np.asarray(got)[:, 4], np.arange(k))


def test_first_k_with_the_next_value_as_threshold():
  # The box search takes its k boxes with the (k+1)-th smallest bound as threshold (it also needs that value).
  keys = _keys(500, 6, 3)
  k = 32
  members = jax.jit(lambda x: smallest.first_k(x, k, smallest.kth_smallest(x, k + 1)))(keys)
  np.testing.assert_array_equal(np.asarray(members), np.sort(_stable_smallest(keys, k), axis=0))


@pytest.mark.parametrize('m', [2894, 2895])
def test_first_k_packed_and_separate_counts(m):
  # Below and equal counts share one float32 sum up to M = 2,894 ((M + 1)² ≤ 2²³), and are counted apart above.
  keys = _keys(m, 4, m)
  keys[:, 3] = np.inf                                                # every key equal to the threshold
  for k in (1, 77):
    members = jax.jit(lambda x: smallest.first_k(x, k, smallest.kth_smallest(x, k)))(keys)
    np.testing.assert_array_equal(np.asarray(members), np.sort(_stable_smallest(keys, k), axis=0))


def test_first_k_needs_k_keys():
  with pytest.raises(ValueError, match='k = 5 of 4 keys'):
    smallest.first_k(jnp.zeros((4, 2)), 5, jnp.zeros(2))


def test_first_k_on_long_columns():
  # 40,001 keys per column: prefix counts over 1,251 blocks of 32 rows (the last one padded), their totals
  # counted the same way over 40 blocks.
  rng = np.random.default_rng(4)
  keys = rng.integers(0, 500, size=(40_001, 2)).astype(np.float32)
  members = jax.jit(lambda x: smallest.first_k(x, 50, smallest.kth_smallest(x, 50)))(keys)
  np.testing.assert_array_equal(np.asarray(members), np.sort(_stable_smallest(keys, 50), axis=0))


def test_negative_zero_counts_as_zero():
  keys = np.array([[2.0], [-0.0], [1.0], [0.0]], np.float32)
  assert float(smallest.kth_smallest(keys, 2)[0]) == 0.0
  got = smallest.first_k(keys, 2, smallest.kth_smallest(keys, 2))
  np.testing.assert_array_equal(np.asarray(got)[:, 0], [1, 3])
