"""DLF: our stored linear scoring is scikit-learn's SGDOneClassSVM `score_samples`, fitted in float64."""
import numpy as np
from sklearn.linear_model import SGDOneClassSVM

from g2sf_jax.methods.m3dm import dlf


def test_fit_and_score_are_scikit_learns(tmp_path):
  rng = np.random.default_rng(0)
  x = (np.abs(rng.normal(size=(500, 3))) * [1.0, 0.1, 1.0]).astype(np.float32)
  ours = dlf.fit(x, nu=0.5, max_iter=1000)
  ref = SGDOneClassSVM(nu=0.5, max_iter=1000, random_state=42).fit(x.astype(np.float64))
  assert ours.coef.dtype == np.float64
  np.testing.assert_array_equal(ours.coef, ref.coef_)
  test = np.abs(rng.normal(size=(50, 3))).astype(np.float32)
  np.testing.assert_array_equal(ours.score_samples(test), ref.score_samples(test.astype(np.float64)))
  dlf.save(tmp_path / 'dlf.npz', ours, ours)
  detect, segment = dlf.load(tmp_path / 'dlf.npz')
  np.testing.assert_array_equal(detect.score_samples(test), ours.score_samples(test))
  float32_fit = SGDOneClassSVM(nu=0.5, max_iter=1000, random_state=42).fit(x)  # what the reference does not do
  assert float32_fit.coef_.dtype == np.float32
