"""Orbax save/restore of array pytrees: converted weights, memory banks, fusion models.

Each checkpoint is written into a uniquely named temporary folder that is renamed into place on success
(`io.atomic_dir`), so a checkpoint directory either holds a complete tree or does not exist; an interrupted save
never leaves a half-written checkpoint behind, and only a folder that is itself a checkpoint is ever replaced.
"""
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from g2sf_jax import io
from g2sf_jax.errors import MissingInputError, OutputExistsError

_META = 'g2sf_meta.json'
_OTHER_PROCESS_TREE = 'tree.npz'
def save(path: str | os.PathLike, tree: Any, meta: dict | None = None, replaces: dict | None = None) -> Path:
  """Saves `tree` (a pytree of arrays) at `path` atomically, replacing an older checkpoint there.

  `meta` is a small JSON-able dict (what made the checkpoint, shapes, hashes) stored beside the arrays. A folder at
  `path` that is not a checkpoint of ours (no `g2sf_meta.json` + `tree/`) is never replaced: FileExistsError; nor
  is one whose meta lacks the items of `replaces` (e.g. `{'model': 'point_mae'}`: a converter never overwrites
  another model's weights or a trained state).
  """
  path = Path(path).absolute()
  if path.exists() and not exists(path):
    raise OutputExistsError(f'{path}: exists and is not a g2sf-jax checkpoint (no {_META} and tree/); it is left '
                            'untouched: move it away or choose another folder')
  if path.exists() and replaces:
    old = json.loads((path / _META).read_text())
    if any(old.get(k) != v for k, v in replaces.items()):
      what = {k: old.get(k) for k in replaces}
      raise OutputExistsError(f'{path}: holds another checkpoint ({what}, not {replaces}); it is left untouched: '
                              'move it away or choose another folder')
  tree = jax.tree.map(np.asarray, tree)
  with io.atomic_dir(path, may_replace=exists) as tmp:
    if jax.process_index() == 0:
      checkpointer = _checkpointer()
      checkpointer.save(tmp / 'tree', tree)
      checkpointer.wait_until_finished()
    else:  # Orbax writes host arrays from process 0 only; the others' (scratch) checkpoints are plain .npz
      np.savez(tmp / _OTHER_PROCESS_TREE, **_flatten(tree))
    (tmp / _META).write_text(json.dumps(meta or {}, indent=1, sort_keys=True))
  return path


def exists(path: str | os.PathLike) -> bool:
  path = Path(path)
  return (path / _META).is_file() and ((path / 'tree').is_dir() or (path / _OTHER_PROCESS_TREE).is_file())


def _flatten(tree: Any, prefix: str = '') -> dict[str, np.ndarray]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    if not isinstance(key, str) or '/' in key or not key:
      raise TypeError(f'checkpoints: tree keys must be non-empty strings without "/", got {key!r}')
    out.update(_flatten(value, f'{prefix}/{key}' if prefix else key))
  return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for key, value in flat.items():
    *parents, leaf = key.split('/')
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def load(path: str | os.PathLike, how_to_make: str = '') -> tuple[Any, dict]:
  """Returns `(tree, meta)` with NumPy leaves.

  `how_to_make` is the command that creates this checkpoint; it goes into the error when the checkpoint is missing.
  """
  path = Path(path).absolute()
  if not exists(path):
    hint = f'; create it with: {how_to_make}' if how_to_make else ''
    raise MissingInputError(f'checkpoint not found or incomplete: {path}{hint}')
  if (path / _OTHER_PROCESS_TREE).is_file():
    with np.load(path / _OTHER_PROCESS_TREE, allow_pickle=False) as z:
      tree = _unflatten({k: z[k] for k in z.files})
  else:
    tree = _checkpointer().restore(path / 'tree')
  meta = json.loads((path / _META).read_text())
  return _to_numpy(tree), meta


def _checkpointer() -> ocp.StandardCheckpointer:
  """Orbax for this process alone: our checkpoints hold host arrays, and in a multi-process run each process reads
  and writes its own (process 0 the run's), so Orbax must not wait for the others."""
  me = jax.process_index()
  return ocp.StandardCheckpointer(
      multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me}))


def _to_numpy(tree: Any) -> Any:
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return type(tree)(_to_numpy(v) for v in tree)
  return np.asarray(tree)

