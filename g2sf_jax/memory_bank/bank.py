"""One modality's memory bank, built and stored: normalise (§3.1), coreset (§3.2), the normalised coreset rows.

algorithms.md §3. Banks are stored as orbax checkpoints (`g2sf_jax.checkpoints`).
"""
import dataclasses
import os
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from g2sf_jax import checkpoints
from g2sf_jax.memory_bank.greedy_coreset import coreset
from g2sf_jax.memory_bank.normaliser import Normaliser


def gather_rows(bank: np.ndarray, idx: np.ndarray, normaliser: Normaliser | None = None) -> np.ndarray:
  """`normaliser(bank[idx])` → `[k, d]` float32: the coreset (the *unprojected* normalised rows)."""
  return (normaliser or Normaliser.identity())(bank[np.asarray(idx)])


@dataclasses.dataclass(frozen=True)
class ModalityBank:
  coreset: np.ndarray          # [k, d] float32 normalised coreset rows
  coreset_idx: np.ndarray      # [k] int32 rows of the full bank they came from
  normaliser: Normaliser


def build(bank: np.ndarray, normalise: bool, fraction: float, eps: float, key: jax.Array, fp16: bool = True,
          chunk_rows: int = 16384, progress: Callable[[int, int], None] | None = None,
          normaliser: Normaliser | None = None, size: int | None = None, *, mesh: Mesh,
          mode: str = 'reference') -> ModalityBank:
  """Full bank `[n, d]` (raw features, any background rows included) → its normalised coreset (algorithms.md §3.1–3.2).

  `normalise`: True for IMG (scalar mean/std of this bank), False for PCD; a given `normaliser` replaces that choice
  (M3DM normalises all its banks with statistics of two of them). `size` fixes k instead of `fraction`. `bank` is
  not modified and may be a memmap.
  """
  if normaliser is None:
    normaliser = Normaliser.fit(bank, chunk_rows) if normalise else Normaliser.identity()
  idx = coreset(bank, fraction, eps, key, fp16, normaliser, chunk_rows, progress, size, mesh=mesh, mode=mode)
  return ModalityBank(gather_rows(bank, idx, normaliser), idx, normaliser)


def save(path: str | os.PathLike, banks: dict[str, ModalityBank], meta: dict | None = None) -> None:
  """Stores `{modality: ModalityBank}` (one class) as an orbax checkpoint at `path`, atomically."""
  tree = {name: {'coreset': np.asarray(b.coreset, np.float32),
                 'coreset_idx': np.asarray(b.coreset_idx, np.int32),
                 'mean': np.asarray([b.normaliser.mean], np.float64),
                 'std': np.asarray([b.normaliser.std], np.float64)} for name, b in banks.items()}
  checkpoints.save(path, tree, dict(meta or {}, modalities=sorted(banks)))


def load(path: str | os.PathLike, how_to_make: str = '') -> tuple[dict[str, ModalityBank], dict]:
  """Inverse of `save`: `({modality: ModalityBank}, meta)`."""
  tree, meta = checkpoints.load(path, how_to_make)
  banks = {}
  for name, t in tree.items():
    missing = {'coreset', 'coreset_idx', 'mean', 'std'} - set(t)
    if missing:
      raise ValueError(f'memory bank checkpoint {path}: modality {name!r} lacks {sorted(missing)}')
    banks[name] = ModalityBank(np.asarray(t['coreset'], np.float32), np.asarray(t['coreset_idx'], np.int32),
                               Normaliser(float(t['mean'][0]), float(t['std'][0])))
  return banks, meta
