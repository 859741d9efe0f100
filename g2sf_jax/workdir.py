"""The layout of a work directory and its stage markers: where every output lives and whether it is up to date.

  <workdir>/data/                         prepared TFDS data (every class)
  <workdir>/<class>/<stage id>/           a class-scope stage's outputs: extract/, patchcore/banks/, g2sf/train/ …
  <workdir>/<class>/<stage id>.done.json  its marker: the key of the inputs the outputs were made from
  <workdir>/<stage id>/ (+ .done.json)    a dataset-scope stage (e.g. a model trained on every class)
  <workdir>/<method>/config.json          the config of the method's last completed run (what `Detector.load` uses)
  <workdir>/<method>/report/              its results tables, curves and overlays

A stage writes its outputs first and its marker last (atomically), so a marker means "complete"; it counts only
while its output folder exists too. Stage folders carry an `inputs.key` stamp: a folder made from other inputs is
emptied before the stage runs again, and a folder without a stamp (not made by g2sf-jax) is never touched.
"""
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Iterator

from g2sf_jax import io
from g2sf_jax.errors import OutputExistsError, WorkdirBusyError

_STAMP = 'inputs.key'


def stage_key(*parts: Any) -> str:
  """A short stable hash of JSON-able parts (config dicts, upstream keys, file hashes)."""
  blob = json.dumps(parts, sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


def files_fingerprint(folder: str | os.PathLike) -> str:
  """A hash of the name, size and modification time of every file below `folder` (a user's raw class folder): a
  fixed, replaced, added or removed file changes it, without reading the files."""
  folder = Path(folder)
  entries = [(str(p.relative_to(folder)), st.st_size, st.st_mtime_ns)
             for p in sorted(folder.rglob('*')) if p.is_file() for st in (p.stat(),)]
  return stage_key(entries)


class Workdir:
  """Paths and markers of one work directory."""

  def __init__(self, root: str | os.PathLike):
    self.root = Path(root).absolute()

  @property
  def data_dir(self) -> Path:
    return self.root / 'data'

  def stage_dir(self, stage_id: str, class_name: str = '') -> Path:
    """The output folder of a stage: per class, or (`class_name=''`) of a dataset-scope stage."""
    return (self.root / class_name if class_name else self.root) / stage_id

  def marker(self, stage_id: str, class_name: str = '') -> Path:
    out = self.stage_dir(stage_id, class_name)
    return out.with_name(out.name + '.done.json')

  def method_dir(self, method: str) -> Path:
    return self.root / method

  def config_path(self, method: str) -> Path:
    return self.method_dir(method) / 'config.json'

  def report_dir(self, method: str) -> Path:
    return self.method_dir(method) / 'report'

  def methods(self) -> list[str]:
    """The methods with a completed run here (a `<method>/config.json`)."""
    return sorted(p.parent.name for p in self.root.glob('*/config.json'))

  @contextlib.contextmanager
  def lock(self, what: str) -> Iterator[None]:
    """Holds `<workdir>/.lock` while a run writes here; a second run is refused at once, naming the holder.

    An OS file lock (flock): it is released when the holding process ends, however it ends.
    """
    self.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.root / '.lock', os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 4096).decode(errors='replace').strip() or 'an unknown process'
      os.close(fd)
      raise WorkdirBusyError(f'{self.root}: another run is using this work directory ({holder}); wait for it to '
                             'finish or choose another --config.workdir') from None
    try:
      started = datetime.datetime.now().isoformat(timespec='seconds')
      os.ftruncate(fd, 0)
      os.pwrite(fd, f'pid {os.getpid()} on {socket.gethostname()} since {started}: {what}'.encode(), 0)
      yield
    finally:
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)

  # Markers.

  def key_of(self, stage_id: str, class_name: str = '') -> str | None:
    """The key a completed stage was run with, or None (no marker, unreadable marker, or outputs gone)."""
    marker = self.marker(stage_id, class_name)
    if not marker.is_file() or not self.stage_dir(stage_id, class_name).is_dir():
      return None
    try:
      return json.loads(marker.read_text()).get('key')
    except (OSError, json.JSONDecodeError):
      return None

  def is_done(self, stage_id: str, class_name: str, key: str) -> bool:
    return self.key_of(stage_id, class_name) == key

  def info(self, stage_id: str, class_name: str = '') -> dict:
    """What the stage recorded in its marker (`{}` if none)."""
    try:
      return json.loads(self.marker(stage_id, class_name).read_text()).get('info', {})
    except (OSError, json.JSONDecodeError):
      return {}

  def mark_done(self, stage_id: str, class_name: str, key: str, info: dict | None = None) -> None:
    with io.atomic_write(self.marker(stage_id, class_name), 'w') as f:
      f.write(json.dumps({'key': key, 'info': info or {}}, indent=1, sort_keys=True, default=str))

  def invalidate(self, stage_id: str, class_name: str = '') -> None:
    self.marker(stage_id, class_name).unlink(missing_ok=True)

  def fresh_dir(self, stage_id: str, class_name: str, key: str) -> Path:
    """The stage's output folder, emptied first when a previous (possibly interrupted) run filled it from other
    inputs; a run with the same inputs keeps what is there, which is how an interrupted stage resumes.

    Refuses (OutputExistsError) to touch a folder that has no `inputs.key` stamp: g2sf-jax did not make it.
    """
    path = self.stage_dir(stage_id, class_name)
    stamp = path / _STAMP
    if path.exists() and not stamp.is_file():
      if any(path.iterdir()):
        raise OutputExistsError(f'{path}: exists but was not made by g2sf-jax (no {_STAMP}); move it away or choose '
                              'another --config.workdir')
    elif path.exists() and stamp.read_text() != key:
      self.invalidate(stage_id, class_name)
      shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    if not stamp.is_file():
      with io.atomic_write(stamp, 'w') as f:
        f.write(key)
    return path
