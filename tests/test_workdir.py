import pytest

from g2sf_jax.workdir import Workdir, stage_key


def test_key_is_stable_and_input_sensitive():
  assert stage_key({'a': 1, 'b': [2, 3]}) == stage_key({'b': [2, 3], 'a': 1})
  assert stage_key({'a': 1}) != stage_key({'a': 2})
  assert stage_key('x', 'up') != stage_key('x', 'other-up')


def test_layout():
  wd = Workdir('/w')
  assert wd.stage_dir('g2sf/train', 'bagel') == wd.root / 'bagel' / 'g2sf' / 'train'
  assert wd.marker('g2sf/train', 'bagel') == wd.root / 'bagel' / 'g2sf' / 'train.done.json'
  assert wd.stage_dir('m3dm/uff') == wd.root / 'm3dm' / 'uff'  # dataset scope
  assert wd.config_path('btf') == wd.root / 'btf' / 'config.json'


def test_marker_needs_its_outputs_and_round_trips(tmp_path):
  wd = Workdir(tmp_path)
  assert not wd.is_done('extract', 'bagel', 'k1')
  wd.fresh_dir('extract', 'bagel', 'k1')
  wd.mark_done('extract', 'bagel', 'k1', {'rows': 3})
  assert wd.is_done('extract', 'bagel', 'k1') and wd.info('extract', 'bagel') == {'rows': 3}
  assert not wd.is_done('extract', 'bagel', 'k2') and not wd.is_done('extract', 'tire', 'k1')
  wd.marker('extract', 'bagel').write_text('{truncated')
  assert wd.key_of('extract', 'bagel') is None
  wd.mark_done('extract', 'bagel', 'k1')
  (wd.stage_dir('extract', 'bagel') / 'inputs.key').unlink()
  wd.stage_dir('extract', 'bagel').rmdir()
  assert wd.key_of('extract', 'bagel') is None  # a marker without its outputs does not count


def test_fresh_dir_keeps_same_inputs_and_empties_other_ones(tmp_path):
  wd = Workdir(tmp_path)
  out = wd.fresh_dir('g2sf/train', 'cube', 'k1')
  (out / 'state').write_text('epoch 3')
  assert (wd.fresh_dir('g2sf/train', 'cube', 'k1') / 'state').read_text() == 'epoch 3'  # resumes
  wd.mark_done('g2sf/train', 'cube', 'k1')
  out = wd.fresh_dir('g2sf/train', 'cube', 'k2')
  assert not (out / 'state').exists() and (out / 'inputs.key').read_text() == 'k2'
  assert not wd.marker('g2sf/train', 'cube').exists()


def test_fresh_dir_never_touches_a_folder_it_did_not_make(tmp_path):
  wd = Workdir(tmp_path)
  theirs = wd.stage_dir('extract', 'cube')
  theirs.mkdir(parents=True)
  (theirs / 'notes.txt').write_text('mine')
  with pytest.raises(FileExistsError, match='not made by g2sf-jax'):
    wd.fresh_dir('extract', 'cube', 'k1')
  assert (theirs / 'notes.txt').read_text() == 'mine'
