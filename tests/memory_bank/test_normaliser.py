"""algorithms.md §3.1: the scalar normaliser of a bank, against NumPy."""
import numpy as np
import pytest

from g2sf_jax import memory_bank as mb
from g2sf_jax.errors import DataError


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


def test_constant_or_non_finite_features_are_refused():
  """All-zero point features (a backbone that found no usable points) would standardise to NaN: refused, named."""
  for bank in (np.zeros((10, 4), np.float32), np.full((10, 4), np.inf, np.float32)):
    with pytest.raises(DataError, match=r'training features of shape \(10, 4\) are all equal or not finite'):
      mb.Normaliser.fit(bank)
