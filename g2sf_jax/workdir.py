"""A work directory: where every stage's outputs live, in versions that are published atomically and verified.

  <workdir>/g2sf-workdir.json            the signature (format 2) that makes a folder a work directory
  <workdir>/.lock, .readers              the one writer's lock, and the readers' shared lock
  <workdir>/run.log                      every run's log
  <workdir>/raw/<class>/                 the generated synthetic set, when g2sf-jax generates it
  <workdir>/<class>/<stage folder>/      a class's stage: extract/<variant>, patchcore/banks, g2sf/train, …
      <version>/                         one build: the outputs, and once complete their manifest.json
      current.json                       the published version and its manifest's SHA-256
  <workdir>/<stage folder>/              a dataset-scope stage (e.g. m3dm/uff), likewise
  <workdir>/<method>/run.json            the method's last complete run: its config and the version of every stage
                                         of every class, the consistent set that predict, export and reports read
  <workdir>/<method>/report/             its results tables, curves and overlays

A stage builds into a new version beside the published one and is published by replacing `current.json` in one
rename, so a crash at any point leaves the last good version in place. A version's manifest lists every file with
its size and SHA-256 (`g2sf_jax.manifest`): a stage is up to date only while its key matches and every file is
intact, so a deleted, truncated or edited output is rebuilt by the next run. Readers resolve every stage through a
`run.json` and hold `.readers` while they load; old versions are removed after a run only while nobody reads. A
build interrupted by a crash is resumed by the next run with the same inputs (the same key).
"""
import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import stat
from pathlib import Path
from typing import Any, Iterator

from g2sf_jax import io, manifest
from g2sf_jax.errors import CorruptOutputError, DataError, OutputExistsError, UserError, WorkdirBusyError

FORMAT = 2
SIGNATURE = 'g2sf-workdir.json'
CURRENT = 'current.json'
RUN_RECORD = 'run.json'
_BUILDING = 'building.json'


def stage_key(*parts: Any) -> str:
  """A short stable hash of JSON-able parts (config dicts, upstream keys, file hashes)."""
  blob = json.dumps(parts, sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


def files_fingerprint(folder: str | os.PathLike) -> str:
  """A hash of the path, size and modification time of every file below `folder` (a raw class folder), following
  symbolic links (each real folder once): a fixed, replaced, added or removed file changes it, without reading the
  files."""
  folder = Path(folder)
  entries, seen = [], set()
  for root, dirs, names in os.walk(folder, followlinks=True):
    real = os.path.realpath(root)
    if real in seen:
      dirs[:] = []
      continue
    seen.add(real)
    dirs.sort()
    for name in sorted(names):
      path = Path(root) / name
      with contextlib.suppress(FileNotFoundError):
        st = path.stat()
        if stat.S_ISREG(st.st_mode):
          entries.append((str(path.relative_to(folder)), st.st_size, st.st_mtime_ns))
  return stage_key(sorted(entries))


def no_symlinks(path: Path, below: Path) -> None:
  """Refuses (one line) a path whose part below `below` is a symbolic link: outputs are never followed elsewhere."""
  path, below = Path(path), Path(below)
  part = below
  for name in path.relative_to(below).parts:
    part = part / name
    if part.is_symlink():
      raise OutputExistsError(f'{part}: a symbolic link inside the work directory; g2sf-jax writes only into '
                              'folders it made itself: remove the link')


def _open_nofollow(path: Path, flags: int) -> int:
  """`os.open` that refuses a symbolic link (a planted `.lock` could otherwise truncate its target); the new file's
  permissions follow the umask."""
  try:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
  except OSError as e:
    if e.errno == errno.ELOOP:
      raise OutputExistsError(f'{path}: a symbolic link; remove it (g2sf-jax never follows one to write)') from None
    if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
      raise UserError(f'{path}: cannot write here ({e.strerror}); choose a writable --config.workdir') from None
    raise


class Version:
  """One complete build of a stage: its folder and manifest (key, info, files)."""

  def __init__(self, path: Path, manifest_: dict):
    self.path = path
    self.manifest = manifest_

  @property
  def key(self) -> str:
    return self.manifest.get('key', '')

  @property
  def info(self) -> dict:
    return self.manifest.get('info', {})

  @property
  def sha256(self) -> str:
    return manifest.sha256_json(self.manifest)

  def check(self, rebuild: str, refresh_stats: bool = False) -> None:
    """Raises CorruptOutputError naming the first damaged file and the command that rebuilds it."""
    manifest.check(self.path, self.manifest, rebuild, refresh_stats)

  def intact(self, refresh_stats: bool = False) -> bool:
    return not manifest.problems(self.path, self.manifest, refresh_stats)


class StageHome:
  """A stage's folder for one class (or the dataset): its versions and the pointer to the published one."""

  def __init__(self, path: Path):
    self.path = Path(path)

  def current(self) -> Version | None:
    """The published version, or None (never built, or its pointer or manifest is gone or damaged)."""
    try:
      pointer = json.loads((self.path / CURRENT).read_text())
      folder = self.path / pointer['version']
      found = manifest.read(folder, pointer['manifest_sha256'])
    except (OSError, ValueError, KeyError, TypeError, CorruptOutputError):
      return None
    return None if found is None else Version(folder, found)

  def start(self, key: str, salvage: bool = False) -> Path:
    """The folder a build of `key` writes into. An unpublished build of the same key (an interrupted run) is
    resumed; a published one is never written into again (readers may be using it): a new folder is made, and with
    `salvage` it starts with hard links to the old build's files that are still intact."""
    if self.path.exists() and not (self.path / CURRENT).exists() and not self._versions():
      if any(self.path.iterdir()):
        raise OutputExistsError(f'{self.path}: exists but was not made by g2sf-jax; move it away or choose another '
                                '--config.workdir')
    self.path.mkdir(parents=True, exist_ok=True)
    name, n = key, 0
    while (self.path / name / manifest.MANIFEST).exists():
      n += 1
      name = f'{key}.{n}'
    folder = self.path / name
    if salvage and n and not folder.exists():
      self._salvage(self.path / (key if n == 1 else f'{key}.{n - 1}'), folder)
    folder.mkdir(exist_ok=True)
    with io.atomic_write(self.path / _BUILDING, 'w') as f:
      json.dump({'version': name}, f)
    return folder

  def building(self) -> Path:
    """The folder of the build in progress (`start`), for the other processes of a multi-process run."""
    return self.path / json.loads((self.path / _BUILDING).read_text())['version']

  @staticmethod
  def _salvage(old: Path, new: Path) -> None:
    found = manifest.read(old)
    new.mkdir()
    for rel, (size, digest) in (found or {}).get('files', {}).items():
      src = old / rel
      with contextlib.suppress(OSError):
        if src.stat().st_size == size and manifest.sha256_file(src) == digest:
          (new / rel).parent.mkdir(parents=True, exist_ok=True)
          os.link(src, new / rel)

  def publish(self, folder: Path, stage_id: str, key: str, info: dict) -> Version:
    """Writes `folder`'s manifest, then points `current.json` at it (one rename): the new version is live."""
    written = manifest.write(folder, {'format': FORMAT, 'stage': stage_id, 'key': key, 'info': info})
    version = Version(folder, written)
    with io.atomic_write(self.path / CURRENT, 'w') as f:
      json.dump({'version': folder.name, 'manifest_sha256': version.sha256}, f, indent=1)
    (self.path / _BUILDING).unlink(missing_ok=True)
    return version

  def _versions(self) -> list[Path]:
    return [p for p in self.path.iterdir() if p.is_dir() and not p.is_symlink()] if self.path.is_dir() else []

  def remove_unused(self, keep: set[Path]) -> list[Path]:
    """Removes the versions that are neither published nor in `keep`; returns them."""
    current = self.current()
    removed = []
    for folder in self._versions():
      if folder not in keep and (current is None or folder != current.path):
        shutil.rmtree(folder)
        removed.append(folder)
    return removed


class Workdir:
  """Paths, stage homes, run records and locks of one work directory."""

  def __init__(self, root: str | os.PathLike):
    self.root = Path(root).absolute()

  # The folder itself.

  def create(self) -> None:
    """Makes the folder a work directory (or checks that it is one of this format), refusing one made by an
    earlier format of g2sf-jax, one it cannot write, and symbolic links at the top."""
    try:
      self.root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise UserError(f'{self.root}: cannot create the work directory ({e.strerror})') from None
    signature = self.root / SIGNATURE
    if signature.is_symlink():
      raise OutputExistsError(f'{signature}: a symbolic link; remove it')
    if signature.exists():
      self.check()
      return
    if any(self.root.glob('**/*.done.json')):
      raise DataError(f'{self.root}: a work directory of g2sf-jax 0.1 (stage markers *.done.json); the layout '
                      'changed in 0.2 (versioned, verified outputs): choose a new --config.workdir')
    fd = _open_nofollow(signature, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with os.fdopen(fd, 'w') as f:
      json.dump({'software': 'g2sf-jax', 'format': FORMAT}, f)

  def check(self) -> None:
    """Raises (one line) unless the folder is a work directory of this format."""
    path = self.root / SIGNATURE
    try:
      found = json.loads(path.read_text())
    except FileNotFoundError:
      raise DataError(f'{self.root}: not a g2sf-jax work directory (no {SIGNATURE}); run experiments.run with '
                      f'--config.workdir={self.root} first') from None
    except (OSError, ValueError) as e:
      raise CorruptOutputError(f'{path}: damaged ({e})') from None
    if not isinstance(found, dict) or found.get('format') != FORMAT:
      raise DataError(f'{path}: work directory format {found.get("format") if isinstance(found, dict) else "?"}, '
                      f'this g2sf-jax reads format {FORMAT}: use a new --config.workdir')

  @staticmethod
  def enclosing(path: str | os.PathLike) -> Path | None:
    """The work directory that `path` lies in (or is), if any."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
      if (folder / SIGNATURE).is_file():
        return folder
    return None

  @property
  def log_path(self) -> Path:
    return self.root / 'run.log'

  def open_log(self) -> Path:
    """`run.log`, created if needed; refused if it is a symbolic link."""
    os.close(_open_nofollow(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    return self.log_path

  # Stages.

  def home(self, stage_folder: str, class_name: str = '') -> StageHome:
    """The home of a stage's versions: per class, or (`class_name=''`) of a dataset-scope stage."""
    path = (self.root / class_name if class_name else self.root) / stage_folder
    no_symlinks(path, self.root)
    return StageHome(path)

  def method_dir(self, method: str) -> Path:
    return self.root / method

  def report_dir(self, method: str) -> Path:
    return self.method_dir(method) / 'report'

  # Run records.

  def record_path(self, method: str) -> Path:
    return self.method_dir(method) / RUN_RECORD

  def methods(self) -> list[str]:
    """The methods with a completed run here (a `<method>/run.json`)."""
    return sorted(p.parent.name for p in self.root.glob(f'*/{RUN_RECORD}'))

  def write_record(self, method: str, record: dict) -> None:
    """`<method>/run.json`: `record` with its own digest, so an edited or damaged record is detected."""
    no_symlinks(self.record_path(method), self.root)
    with io.atomic_write(self.record_path(method), 'w') as f:
      json.dump(dict(record, digest=manifest.sha256_json(record)), f, indent=1, sort_keys=True)

  def read_record(self, method: str) -> dict:
    """The method's run record, checked against its digest."""
    path = self.record_path(method)
    try:
      record = json.loads(path.read_text())
    except FileNotFoundError:
      raise DataError(f'{path} not found: {self.root} holds no finished {method!r} run') from None
    except (OSError, ValueError) as e:
      raise CorruptOutputError(f'{path}: damaged ({e.__class__.__name__}: {e}); re-run experiments.run to '
                               'rewrite it') from None
    digest = record.pop('digest', None) if isinstance(record, dict) else None
    if digest != manifest.sha256_json(record):
      raise CorruptOutputError(f'{path}: edited or damaged since experiments.run wrote it (its digest does not '
                               'match); re-run experiments.run to rewrite it')
    return record

  def recorded_version(self, record: dict, class_name: str, stage_id: str, rebuild: str) -> Version:
    """The version of `stage_id` that a run record names for `class_name` ('' for a dataset-scope stage), checked
    against its manifest (raises CorruptOutputError naming the damaged file and `rebuild`)."""
    try:
      rel = record['stages'][class_name][stage_id]
      expected = record['manifests'][rel]
    except KeyError:
      raise DataError(f'{self.record_path(record["method"])}: no {stage_id!r} output recorded for '
                      f'{class_name or "the dataset"!r}') from None
    folder = self.root / rel
    no_symlinks(folder, self.root)
    found = manifest.read(folder, expected)
    if found is None:
      raise CorruptOutputError(f'{folder}: the {stage_id} output this run recorded is gone; rebuild it with: '
                               f'{rebuild}')
    version = Version(folder, found)
    version.check(rebuild)
    return version

  def referenced(self) -> set[Path]:
    """Every version folder that some method's run record uses."""
    out = set()
    for method in self.methods():
      with contextlib.suppress(UserError):
        out |= {self.root / rel for rel in self.read_record(method).get('manifests', {})}
    return out

  # Locks.

  @contextlib.contextmanager
  def lock(self, what: str) -> Iterator[None]:
    """Holds `<workdir>/.lock` while a run writes here; a second run is refused at once, naming the holder.

    An OS file lock (flock): released when the holding process ends, however it ends.
    """
    fd = _open_nofollow(self.root / '.lock', os.O_RDWR | os.O_CREAT)
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

  @contextlib.contextmanager
  def reading(self) -> Iterator[None]:
    """A shared lock held while a reader resolves and loads outputs; old versions are not removed meanwhile.

    Read-only work directories (no `.readers` can be made) are read without it: no run can write there either.
    """
    try:
      fd = _open_nofollow(self.root / '.readers', os.O_RDONLY | os.O_CREAT)
    except UserError:
      yield
      return
    try:
      fcntl.flock(fd, fcntl.LOCK_SH)
      yield
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)

  def remove_unused(self, homes: list[StageHome]) -> list[Path]:
    """Removes the versions of `homes` that no run record uses and that are not published, unless a reader holds
    `.readers` (then they stay for a later run); returns what was removed."""
    fd = _open_nofollow(self.root / '.readers', os.O_RDONLY | os.O_CREAT)
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        return []
      keep = self.referenced()
      return [p for home in homes for p in home.remove_unused(keep)]
    finally:
      os.close(fd)
