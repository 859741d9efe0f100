"""Which stage outputs in a work directory are complete and still match their inputs.

A stage writes its outputs first and its marker last (atomically), so a marker means "complete". The marker holds a
key that hashes everything the outputs depend on (the relevant config fields and the upstream stages' keys): a
changed input changes the key, and the stage runs again.
"""
import hashlib
import json
import os
from pathlib import Path
from typing import Any


def stage_key(*parts: Any) -> str:
  """A short stable hash of JSON-able parts (config dicts, upstream keys, file hashes)."""
  blob = json.dumps(parts, sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


class StageCache:
  """Markers under `<root>/<scope>/<stage>.done.json`; scope is a class name or '_dataset'."""

  def __init__(self, root: str | os.PathLike):
    self.root = Path(root)

  def _marker(self, stage: str, scope: str) -> Path:
    return self.root / scope / f'{stage}.done.json'

  def is_done(self, stage: str, scope: str, key: str) -> bool:
    marker = self._marker(stage, scope)
    if not marker.is_file():
      return False
    try:
      return json.loads(marker.read_text()).get('key') == key
    except json.JSONDecodeError:
      return False

  def key_of(self, stage: str, scope: str) -> str | None:
    """The key a completed stage was run with, or None."""
    marker = self._marker(stage, scope)
    if not marker.is_file():
      return None
    try:
      return json.loads(marker.read_text()).get('key')
    except json.JSONDecodeError:
      return None

  def mark_done(self, stage: str, scope: str, key: str, info: dict | None = None) -> None:
    marker = self._marker(stage, scope)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix('.tmp')
    tmp.write_text(json.dumps({'key': key, 'info': info or {}}, indent=1, sort_keys=True, default=str))
    os.replace(tmp, marker)

  def invalidate(self, stage: str, scope: str) -> None:
    self._marker(stage, scope).unlink(missing_ok=True)
