"""Orbax save/restore of array pytrees: converted weights, memory banks, fusion models.

Each checkpoint is written into a uniquely named temporary folder that is renamed into place on success
(`io.atomic_dir`), so a checkpoint directory either holds a complete tree or does not exist; an interrupted save
never leaves a half-written checkpoint behind, and only a folder that is itself a checkpoint is ever replaced.
"""
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from g2sf_jax import io
from g2sf_jax.errors import MissingInputError, OutputExistsError

_META = 'g2sf_meta.json'
def save(path: str | os.PathLike, tree: Any, meta: dict | None = None) -> Path:
  """Saves `tree` (a pytree of arrays) at `path` atomically, replacing an older checkpoint there.

  `meta` is a small JSON-able dict (what made the checkpoint, shapes, hashes) stored beside the arrays. A folder at
  `path` that is not a checkpoint of ours (no `g2sf_meta.json` + `tree/`) is never replaced: FileExistsError.
  """
  path = Path(path).absolute()
  if path.exists() and not exists(path):
    raise OutputExistsError(f'{path}: exists and is not a g2sf-jax checkpoint (no {_META} and tree/); it is left '
                            'untouched: move it away or choose another folder')
  with io.atomic_dir(path, may_replace=exists) as tmp:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / 'tree', tree)
    checkpointer.wait_until_finished()
    (tmp / _META).write_text(json.dumps(meta or {}, indent=1, sort_keys=True))
  return path


def exists(path: str | os.PathLike) -> bool:
  return (Path(path) / _META).is_file() and (Path(path) / 'tree').is_dir()


def load(path: str | os.PathLike, how_to_make: str = '') -> tuple[Any, dict]:
  """Returns `(tree, meta)` with NumPy leaves.

  `how_to_make` is the command that creates this checkpoint; it goes into the error when the checkpoint is missing.
  """
  path = Path(path).absolute()
  if not exists(path):
    hint = f'; create it with: {how_to_make}' if how_to_make else ''
    raise MissingInputError(f'checkpoint not found or incomplete: {path}{hint}')
  tree = ocp.StandardCheckpointer().restore(path / 'tree')
  meta = json.loads((path / _META).read_text())
  return _to_numpy(tree), meta


def _to_numpy(tree: Any) -> Any:
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return type(tree)(_to_numpy(v) for v in tree)
  return np.asarray(tree)

