from experiments.configs import synthetic
from g2sf_jax import detector


class _NoData:
  """A run whose prepared data must not be needed."""

  def output(self, class_name, stage_id):
    raise AssertionError(f'read {stage_id} of {class_name}')


def test_data_modalities_of_runs_that_need_no_prepared_data():
  """A run on both modalities preprocesses scans with both, and so does every Eyecandies run, whose classes always
  have both and whose RGB is masked by the cloud (algorithms.md §1.4)."""
  config = synthetic.get_config()
  assert detector._data_modalities(config, _NoData(), 'cube') == ('rgb', 'xyz')
  config.dataset, config.modalities = 'eyecandies', 'rgb'
  assert detector._data_modalities(config, _NoData(), 'CandyCane') == ('rgb', 'xyz')


def test_non_finite_scores_are_never_reported_as_scores():
  import numpy as np
  from g2sf_jax.methods import base

  class Broken:
    rows, inputs = ('IMG',), ()

    def __call__(self, feats):
      image = np.array([1.5, np.nan], np.float32)
      maps = np.zeros((2, 224, 224), np.float32)
      return {'IMG': base.RowScores(image, maps)}

  config = synthetic.get_config()
  config.method, config.modalities = 'patchcore', 'rgb'
  det = detector.Detector(config, Broken())
  good, bad = det.score_features(np.zeros((2, 28, 28, 4), np.float32), None)
  assert good.status == 'ok' and good.image == {'IMG': 1.5}
  assert bad.status == 'unscorable' and bad.image == {} and 'IMG scores came out NaN' in bad.reason
