from experiments.stage_cache import StageCache, stage_key


def test_key_is_stable_and_input_sensitive():
  assert stage_key({'a': 1, 'b': [2, 3]}) == stage_key({'b': [2, 3], 'a': 1})
  assert stage_key({'a': 1}) != stage_key({'a': 2})
  assert stage_key('x', 'up') != stage_key('x', 'other-up')


def test_marker_round_trip_and_invalidation(tmp_path):
  cache = StageCache(tmp_path)
  assert not cache.is_done('features', 'bagel', 'k1')
  cache.mark_done('features', 'bagel', 'k1', {'rows': 3})
  assert cache.is_done('features', 'bagel', 'k1')
  assert cache.key_of('features', 'bagel') == 'k1'
  assert not cache.is_done('features', 'bagel', 'k2')
  assert not cache.is_done('features', 'tire', 'k1')
  (tmp_path / 'bagel' / 'features.done.json').write_text('{truncated')
  assert not cache.is_done('features', 'bagel', 'k1')
  cache.mark_done('features', 'bagel', 'k1')
  cache.invalidate('features', 'bagel')
  assert cache.key_of('features', 'bagel') is None
