"""M3DM's Decision Layer Fusion: two linear one-class SVMs over the per-bank scores (official `features.py`).

scikit-learn's `SGDOneClassSVM(nu, max_iter, random_state=42)`, one on the image scores `[s_xyz, λ_rgb·s_rgb,
s_fused]` of the training samples (fitted on the banks' own training samples, as the code does), one on their
per-pixel maps. The reference passes torch tensors, which scikit-learn converts to float64: fitting is float64
here too. The anomaly score is `score_samples` (X·w), exactly as scikit-learn computes it; the fitted weights are
stored as arrays (no pickle), and scoring repeats scikit-learn's arithmetic.
"""
import dataclasses
from pathlib import Path

import jax
import numpy as np

from g2sf_jax import io


@dataclasses.dataclass(frozen=True)
class LinearOneClass:
  """A fitted SGDOneClassSVM's decision: coef [d], offset [1] (float64)."""
  coef: np.ndarray
  offset: np.ndarray

  def score_samples(self, x: np.ndarray) -> np.ndarray:
    """`[n, d]` → `[n]` float64: `(x·coefᵀ − offset) + offset`, scikit-learn's own order of operations."""
    x = np.asarray(x, np.float64)
    return (x @ self.coef.T - self.offset).ravel() + self.offset


def linear_score(params: dict, x: jax.Array) -> jax.Array:
  """`score_samples` traceable, in float32 (a scorer's `apply`): `x [n, d]` → `[n]` with `params` {'coef' [1, d],
  'offset' [1]} in scikit-learn's order of operations."""
  return (x @ params['coef'].T - params['offset']).ravel() + params['offset']


def fit(x: np.ndarray, nu: float, max_iter: int, random_state: int = 42) -> LinearOneClass:
  """Fits scikit-learn's SGDOneClassSVM on `x [n, d]` (as float64, like the reference's torch → NumPy conversion)."""
  from sklearn.linear_model import SGDOneClassSVM
  model = SGDOneClassSVM(nu=nu, max_iter=max_iter, random_state=random_state).fit(np.asarray(x, np.float64))
  return LinearOneClass(np.asarray(model.coef_, np.float64), np.asarray(model.offset_, np.float64))


def save(path: Path, detect: LinearOneClass, segment: LinearOneClass) -> None:
  io.save_npz_atomic(path, detect_coef=detect.coef, detect_offset=detect.offset, segment_coef=segment.coef,
                     segment_offset=segment.offset)


def load(path: Path) -> tuple[LinearOneClass, LinearOneClass]:
  """(image-level fuser, pixel-level fuser) saved by `save`."""
  with np.load(path) as z:
    return (LinearOneClass(z['detect_coef'], z['detect_offset']),
            LinearOneClass(z['segment_coef'], z['segment_offset']))
