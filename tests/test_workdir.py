"""The work directory: versions published atomically, verified against their manifests, locks and run records."""
import fcntl
import json
import os
import stat

import pytest

from g2sf_jax import manifest
from g2sf_jax.errors import CorruptOutputError, DataError, OutputExistsError, WorkdirBusyError
from g2sf_jax.workdir import Workdir, files_fingerprint, stage_key


def _flip(path, keep_mtime=True):
  """One byte changed in place, its modification time put back: only the content differs."""
  st = os.stat(path)
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01
  path.write_bytes(bytes(data))
  if keep_mtime:
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _build(wd, key='k1', files=None):
  home = wd.home('g2sf/train', 'cube')
  folder = home.start(key)
  for rel, text in (files or {'best/weights.bin': 'w' * 1000, 'notes.txt': 'n'}).items():
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    (folder / rel).write_text(text)
  return home, home.publish(folder, 'g2sf/train', key, {'epoch': 3})


def test_key_is_stable_and_input_sensitive():
  assert stage_key({'a': 1, 'b': [2, 3]}) == stage_key({'b': [2, 3], 'a': 1})
  assert stage_key({'a': 1}) != stage_key({'a': 2})
  assert stage_key('x', 'up') != stage_key('x', 'other-up')


def test_published_version_round_trips_and_a_rebuild_goes_beside_it(tmp_path):
  wd = Workdir(tmp_path)
  wd.create()
  home, version = _build(wd)
  assert home.path == tmp_path / 'cube' / 'g2sf' / 'train' and version.path == home.path / 'k1'
  current = home.current()
  assert current.key == 'k1' and current.info == {'epoch': 3} and current.intact()
  assert set(current.manifest['files']) == {'best/weights.bin', 'notes.txt'}
  again = home.start('k1')  # the published build is never written into again
  assert again == home.path / 'k1.1' and home.current().path == home.path / 'k1'
  (again / 'partial').write_text('half')
  assert home.start('k1') == again and (again / 'partial').is_file()  # an unpublished build resumes


def test_damaged_outputs_are_detected_even_with_their_mtime_put_back(tmp_path):
  wd = Workdir(tmp_path)
  wd.create()
  home, version = _build(wd)
  weights = version.path / 'best' / 'weights.bin'
  _flip(weights)
  found = manifest.problems(version.path, version.manifest)
  assert found == [f'{weights}: content changed since it was written (SHA-256 differs)']
  with pytest.raises(CorruptOutputError, match='weights.bin: content changed .* rebuild it with: make it'):
    version.check('make it')
  (version.path / 'notes.txt').unlink()
  assert any('notes.txt: missing' in p for p in manifest.problems(version.path, version.manifest))


def test_a_copied_folder_is_rehashed_once_and_then_checked_cheaply(tmp_path, monkeypatch):
  wd = Workdir(tmp_path / 'a')
  wd.create()
  _, version = _build(wd)
  copy = tmp_path / 'b'
  os.system(f'cp -a {tmp_path / "a"} {copy}')
  moved = Workdir(copy).home('g2sf/train', 'cube').current()
  hashed = []
  real = manifest.sha256_file
  monkeypatch.setattr(manifest, 'sha256_file', lambda p: hashed.append(p) or real(p))
  monkeypatch.setattr(manifest, '_verified', {})
  assert moved.intact(refresh_stats=True) and len(hashed) == 2  # new inodes: each file read once, stats refreshed
  monkeypatch.setattr(manifest, '_verified', {})
  assert moved.intact() and len(hashed) == 2  # unchanged since: one lstat per file


def test_a_damaged_pointer_or_manifest_means_no_current_version(tmp_path):
  wd = Workdir(tmp_path)
  wd.create()
  home, version = _build(wd)
  (version.path / 'manifest.json').write_text((version.path / 'manifest.json').read_text().replace('3', '4'))
  assert home.current() is None  # its digest no longer matches the pointer
  home2, _ = _build(Workdir(tmp_path), key='k2')
  (home2.path / 'current.json').write_text('{trunc')
  assert home2.current() is None


def test_salvage_keeps_the_intact_files_of_a_damaged_build(tmp_path):
  wd = Workdir(tmp_path)
  wd.create()
  home, version = _build(wd, files={'a.bin': 'a' * 100, 'b.bin': 'b' * 100})
  _flip(version.path / 'b.bin')
  rebuild = home.start('k1', salvage=True)
  assert (rebuild / 'a.bin').read_text() == 'a' * 100 and not (rebuild / 'b.bin').exists()


def test_a_folder_not_made_here_is_never_touched(tmp_path):
  wd = Workdir(tmp_path)
  theirs = wd.home('extract', 'cube').path
  theirs.mkdir(parents=True)
  (theirs / 'notes.txt').write_text('mine')
  with pytest.raises(FileExistsError, match='not made by g2sf-jax'):
    wd.home('extract', 'cube').start('k1')
  assert (theirs / 'notes.txt').read_text() == 'mine'


def test_symbolic_links_are_refused(tmp_path):
  wd = Workdir(tmp_path / 'w')
  wd.create()
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  (tmp_path / 'w' / 'cube').symlink_to(elsewhere)
  with pytest.raises(OutputExistsError, match=r'w/cube: a symbolic link inside the work directory'):
    wd.home('extract', 'cube')
  victim = tmp_path / 'victim.txt'
  victim.write_text('keep me')
  (tmp_path / 'w' / '.lock').symlink_to(victim)
  with pytest.raises(OutputExistsError, match=r'\.lock: a symbolic link'):
    with wd.lock('x'):
      pass
  (tmp_path / 'w' / 'run.log').symlink_to(victim)
  with pytest.raises(OutputExistsError, match=r'run\.log: a symbolic link'):
    wd.open_log()
  assert victim.read_text() == 'keep me'


def test_lock_follows_the_umask_and_refuses_a_second_writer(tmp_path):
  old = os.umask(0o002)
  try:
    wd = Workdir(tmp_path)
    wd.create()
    with wd.lock('first'):
      assert stat.S_IMODE(os.stat(tmp_path / '.lock').st_mode) == 0o664
      with pytest.raises(WorkdirBusyError, match=r'another run .*first'):
        with wd.lock('second'):
          pass
  finally:
    os.umask(old)


def test_run_record_detects_edits(tmp_path):
  wd = Workdir(tmp_path)
  wd.create()
  wd.write_record('g2sf', {'method': 'g2sf', 'config': {'fpfh': {'scale': 0.055}}, 'classes': ['cube'],
                           'stages': {}, 'manifests': {}})
  assert wd.read_record('g2sf')['config']['fpfh']['scale'] == 0.055 and wd.methods() == ['g2sf']
  path = wd.record_path('g2sf')
  path.write_text(path.read_text().replace('0.055', '0.55'))
  with pytest.raises(CorruptOutputError, match='run.json: edited or damaged since experiments.run wrote it'):
    wd.read_record('g2sf')
  path.write_text(path.read_text()[:40])
  with pytest.raises(CorruptOutputError, match=r'run.json: damaged \(JSONDecodeError'):
    wd.read_record('g2sf')


def test_old_versions_go_only_when_unused_and_unread(tmp_path):
  wd = Workdir(tmp_path)
  wd.create()
  home, first = _build(wd, key='k1')
  wd.write_record('g2sf', {'method': 'g2sf', 'config': {}, 'classes': ['cube'],
                           'stages': {'cube': {'g2sf/train': 'cube/g2sf/train/k1'}},
                           'manifests': {'cube/g2sf/train/k1': first.sha256}})
  _, second = _build(wd, key='k2')
  stale = home.start('k3')  # an abandoned build
  assert wd.remove_unused([home]) == [stale]  # k1 is recorded, k2 published
  wd.write_record('g2sf', {'method': 'g2sf', 'config': {}, 'classes': [], 'stages': {}, 'manifests': {}})
  reader = os.open(tmp_path / '.readers', os.O_RDONLY)
  fcntl.flock(reader, fcntl.LOCK_SH)  # a predict call is loading: nothing goes
  assert wd.remove_unused([home]) == [] and first.path.is_dir()
  os.close(reader)
  assert wd.remove_unused([home]) == [first.path] and second.path.is_dir()


def test_a_work_directory_of_the_old_format_is_refused(tmp_path):
  (tmp_path / 'cube').mkdir()
  (tmp_path / 'cube' / 'extract.done.json').write_text(json.dumps({'key': 'k'}))
  with pytest.raises(DataError, match='a work directory of g2sf-jax 0.1'):
    Workdir(tmp_path).create()
  with pytest.raises(DataError, match='not a g2sf-jax work directory'):
    Workdir(tmp_path).check()


def test_fingerprint_follows_symbolic_links(tmp_path):
  real = tmp_path / 'real' / 'train'
  real.mkdir(parents=True)
  (real / 'a.tiff').write_text('1')
  raw = tmp_path / 'raw' / 'cube'
  raw.mkdir(parents=True)
  (raw / 'train').symlink_to(real, target_is_directory=True)
  before = files_fingerprint(raw)
  (real / 'a.tiff').write_text('22')  # edited inside the linked folder
  assert files_fingerprint(raw) != before
  (real / 'loop').symlink_to(real, target_is_directory=True)  # a cycle is walked once
  files_fingerprint(raw)
