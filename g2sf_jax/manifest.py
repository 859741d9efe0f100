"""Content manifests: what a folder of outputs held when it was written, and the check that it still does.

A manifest maps every file below a folder to its size and SHA-256. Checking a folder against its manifest reads a
file's content only when its metadata changed: the writer also keeps each file's (size, mtime, ctime, inode) as it
verified them (`.stat.json`, not part of the manifest), and any write to a file changes its ctime, which no program
can set back. So an untouched folder is checked with one `lstat` per file, while a flipped byte, a truncation, a
replacement or a copied folder is caught (the copy is then re-hashed once, at 1–2 GB/s). Damage that leaves a
file's metadata untouched (media corruption below the file system) is not detected.
"""
import hashlib
import json
import os
import stat
from pathlib import Path

from g2sf_jax import io
from g2sf_jax.errors import CorruptOutputError

MANIFEST = 'manifest.json'
STAT_CACHE = '.stat.json'
_CHUNK = 1 << 22
_verified: dict[str, tuple] = {}  # path → the stat it had when this process last hashed it; content-addressed memo


def sha256_file(path: str | os.PathLike) -> str:
  h = hashlib.sha256()
  with open(path, 'rb', buffering=0) as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def sha256_json(obj) -> str:
  """The digest of a JSON-able object in canonical form (sorted keys, no spaces)."""
  return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(',', ':')).encode()).hexdigest()


def _stat_key(st: os.stat_result) -> list:
  return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def files_below(folder: str | os.PathLike) -> list[str]:
  """Every regular file below `folder` (relative, sorted), except the manifest's own files; a symbolic link or other
  special file is an error: outputs are plain files."""
  folder, out = Path(folder), []
  for root, dirs, names in os.walk(folder):
    for name in dirs + names:
      path = Path(root) / name
      mode = os.lstat(path).st_mode
      if stat.S_ISLNK(mode):
        raise CorruptOutputError(f'{path}: a symbolic link among the outputs; outputs are plain files')
      if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise CorruptOutputError(f'{path}: not a regular file or folder')
    out += [str((Path(root) / n).relative_to(folder)) for n in names]
  return sorted(f for f in out if f not in (MANIFEST, STAT_CACHE))


def write(folder: str | os.PathLike, extra: dict, stat_cache: bool = True) -> dict:
  """Hashes every file below `folder` and writes `folder/manifest.json` (`extra` plus `files`) and, unless the folder
  is to be copied elsewhere (a bundle), the stat cache, atomically; returns the manifest. Call it once the folder's
  outputs are final."""
  folder = Path(folder)
  files, stats = {}, {}
  for rel in files_below(folder):
    path = folder / rel
    before = os.lstat(path)
    digest = sha256_file(path)
    if _stat_key(os.lstat(path)) != _stat_key(before):
      raise CorruptOutputError(f'{path}: changed while its digest was taken')
    files[rel] = [before.st_size, digest]
    stats[rel] = _stat_key(before)
  manifest = dict(extra, files=files)
  with io.atomic_write(folder / MANIFEST, 'w') as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
  if stat_cache:
    _write_stats(folder, stats)
  return manifest


def _write_stats(folder: Path, stats: dict) -> None:
  with io.atomic_write(folder / STAT_CACHE, 'w') as f:
    json.dump(stats, f)


def read(folder: str | os.PathLike, expected_sha256: str | None = None) -> dict | None:
  """The manifest of `folder`, or None if it has none (an unfinished build). With `expected_sha256`, a manifest
  whose digest differs (edited or damaged) raises CorruptOutputError."""
  path = Path(folder) / MANIFEST
  try:
    raw = path.read_bytes()
  except FileNotFoundError:
    return None
  except OSError as e:
    raise CorruptOutputError(f'{path}: cannot be read ({e})') from None
  try:
    manifest = json.loads(raw)
  except (json.JSONDecodeError, UnicodeDecodeError):
    raise CorruptOutputError(f'{path}: damaged (not valid JSON)') from None
  if expected_sha256 is not None and sha256_json(manifest) != expected_sha256:
    raise CorruptOutputError(f'{path}: edited or damaged since it was written (its digest does not match)')
  if not isinstance(manifest, dict) or not isinstance(manifest.get('files'), dict):
    raise CorruptOutputError(f'{path}: not a g2sf-jax manifest')
  return manifest


def problems(folder: str | os.PathLike, manifest: dict, refresh_stats: bool = False) -> list[str]:
  """What no longer matches `manifest` below `folder`, one line per file ([] = intact). `refresh_stats` (a writer,
  holding the work directory's lock) records the metadata of files whose content was re-hashed and matched, so the
  next check is cheap again (e.g. after the folder was copied)."""
  folder = Path(folder)
  try:
    cached = json.loads((folder / STAT_CACHE).read_text())
  except (OSError, ValueError):
    cached = {}
  found, rehashed = [], {}
  for rel, (size, digest) in manifest['files'].items():
    path = folder / rel
    try:
      st = os.lstat(path)
    except FileNotFoundError:
      found.append(f'{path}: missing')
      continue
    if not stat.S_ISREG(st.st_mode):
      found.append(f'{path}: not a regular file')
      continue
    if st.st_size != size:
      found.append(f'{path}: {st.st_size} bytes, {size} were written')
      continue
    key = _stat_key(st)
    if cached.get(rel) == key or _verified.get(str(path)) == key:
      continue
    if sha256_file(path) != digest:
      found.append(f'{path}: content changed since it was written (SHA-256 differs)')
      continue
    _verified[str(path)] = key
    rehashed[rel] = key
  if refresh_stats and rehashed and not found:
    _write_stats(folder, dict(cached, **rehashed))
  return found


def check(folder: str | os.PathLike, manifest: dict, rebuild: str, refresh_stats: bool = False) -> None:
  """Raises CorruptOutputError naming the first damaged file and `rebuild`, the command that makes it again."""
  found = problems(folder, manifest, refresh_stats)
  if found:
    more = f' (and {len(found) - 1} more)' if len(found) > 1 else ''
    raise CorruptOutputError(f'{found[0]}{more}; rebuild it with: {rebuild}')
