"""Orbax save/restore of array pytrees: converted weights, memory banks, fusion models.

Orbax writes into a temporary folder and renames it on success, so a checkpoint directory either holds a complete
tree or does not exist; an interrupted save never leaves a half-written checkpoint behind.
"""
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

_META = 'g2sf_meta.json'


def save(path: str | os.PathLike, tree: Any, meta: dict | None = None) -> Path:
  """Saves `tree` (a pytree of arrays) at `path`, replacing an older checkpoint there.

  `meta` is a small JSON-able dict (what made the checkpoint, shapes, hashes) stored beside the arrays.
  """
  path = Path(path).absolute()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.partial')
  if tmp.exists():
    _rmtree(tmp)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp / 'tree', tree)
  checkpointer.wait_until_finished()
  (tmp / _META).write_text(json.dumps(meta or {}, indent=1, sort_keys=True))
  if path.exists():
    old = path.with_name(path.name + '.old')
    if old.exists():
      _rmtree(old)
    os.replace(path, old)
    os.replace(tmp, path)
    _rmtree(old)
  else:
    os.replace(tmp, path)
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
    raise FileNotFoundError(f'checkpoint not found or incomplete: {path}{hint}')
  tree = ocp.StandardCheckpointer().restore(path / 'tree')
  meta = json.loads((path / _META).read_text())
  return _to_numpy(tree), meta


def _to_numpy(tree: Any) -> Any:
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return type(tree)(_to_numpy(v) for v in tree)
  return np.asarray(tree)


def _rmtree(path: Path) -> None:
  shutil.rmtree(path)
