from experiments.configs import synthetic
from g2sf_jax import detector


def test_data_modalities_of_runs_that_need_no_prepared_data(tmp_path):
  """A run on both modalities preprocesses scans with both, and so does every Eyecandies run, whose classes always
  have both and whose RGB is masked by the cloud (algorithms.md §1.4); neither reads the (here absent) data."""
  config = synthetic.get_config()
  assert detector.data_modalities(config, tmp_path / 'none', 'cube') == ('rgb', 'xyz')
  config.dataset, config.modalities = 'eyecandies', 'rgb'
  assert detector.data_modalities(config, tmp_path / 'none', 'CandyCane') == ('rgb', 'xyz')
