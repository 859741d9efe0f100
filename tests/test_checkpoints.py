import numpy as np
import pytest

from g2sf_jax import checkpoints


def test_round_trip_and_replace(tmp_path):
  tree = {'w': np.arange(6, dtype=np.float32).reshape(2, 3), 'sub': {'b': np.ones(4, np.int32)}}
  checkpoints.save(tmp_path / 'ck', tree, meta={'source': 'test'})
  got, meta = checkpoints.load(tmp_path / 'ck')
  np.testing.assert_array_equal(got['w'], tree['w'])
  np.testing.assert_array_equal(got['sub']['b'], tree['sub']['b'])
  assert meta == {'source': 'test'}
  checkpoints.save(tmp_path / 'ck', {'w': np.zeros(1, np.float32)})
  got, _ = checkpoints.load(tmp_path / 'ck')
  assert set(got) == {'w'}
  assert sorted(p.name for p in tmp_path.iterdir()) == ['ck']  # no temporary folder left behind


def test_missing_names_the_command(tmp_path):
  with pytest.raises(FileNotFoundError, match='python -m ports.dino_vit'):
    checkpoints.load(tmp_path / 'nope', how_to_make='python -m ports.dino_vit SRC.pth OUT')


def test_a_folder_that_is_not_a_checkpoint_is_never_replaced(tmp_path):
  theirs = tmp_path / 'out'
  theirs.mkdir()
  (theirs / 'thesis.tex').write_text('years of work')
  with pytest.raises(FileExistsError, match='not a g2sf-jax checkpoint'):
    checkpoints.save(theirs, {'w': np.zeros(2, np.float32)})
  assert [p.name for p in theirs.iterdir()] == ['thesis.tex'] and sorted(p.name for p in tmp_path.iterdir()) == ['out']
