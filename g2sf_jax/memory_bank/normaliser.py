"""Bank normalisation (algorithms.md §3.1): one scalar mean and std over every element of a bank.

Full-size banks (765k × 1152 float32 for one MVTec PCD class) are only touched in row chunks (`row_chunks`).
"""
import dataclasses
import math
from typing import Iterator

import numpy as np

from g2sf_jax.errors import DataError


def row_chunks(num_rows: int, chunk_rows: int) -> Iterator[slice]:
  """Consecutive row slices of at most `chunk_rows` rows covering `num_rows`."""
  for start in range(0, num_rows, chunk_rows):
    yield slice(start, min(start + chunk_rows, num_rows))


@dataclasses.dataclass(frozen=True)
class Normaliser:
  """`x ↦ (x − mean) / std` with scalars, applied in float32 to bank, test and synthetic features alike."""
  mean: float = 0.0
  std: float = 1.0

  @classmethod
  def identity(cls) -> 'Normaliser':
    """PCD banks are not normalised ("following M3DM", algorithms.md §3.1)."""
    return cls(0.0, 1.0)

  @classmethod
  def fit(cls, bank: np.ndarray, chunk_rows: int = 8192) -> 'Normaliser':
    """Scalar mean and unbiased std over all elements of `bank [n, d]` (IMG, algorithms.md §3.1).

    Two streaming passes with float64 accumulators; only one float64 chunk exists at a time.
    """
    n = bank.size
    if n < 2:
      raise ValueError(f'Normaliser.fit needs at least 2 elements, got bank of shape {bank.shape}')
    total = 0.0
    for rows in row_chunks(bank.shape[0], chunk_rows):
      total += float(np.sum(bank[rows], dtype=np.float64))
    mean = total / n
    sq = 0.0
    for rows in row_chunks(bank.shape[0], chunk_rows):
      dev = bank[rows].astype(np.float64) - mean
      sq += float(np.einsum('ij,ij->', dev, dev))
    std = math.sqrt(sq / (n - 1))
    if not (math.isfinite(mean) and std > 0 and math.isfinite(std)):
      raise DataError(f'the training features of shape {bank.shape} are all equal or not finite (mean {mean}, std '
                      f'{std}), so they cannot be standardised: the backbone found nothing in the training scans '
                      '(too few valid points or pixels? check the scans and config.modalities)')
    return cls(mean, std)

  def __call__(self, x: np.ndarray) -> np.ndarray:
    """`[..., d]` → float32 `[..., d]` (the float64 statistics are rounded to float32, as torch stores them)."""
    x = np.asarray(x, np.float32)
    if self.mean == 0.0 and self.std == 1.0:
      return x
    return (x - np.float32(self.mean)) / np.float32(self.std)
