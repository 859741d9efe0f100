from experiments.configs import synthetic
from g2sf_jax import detector
from g2sf_jax.workdir import Workdir


def test_data_modalities_without_the_prepared_data(tmp_path):
  """With the prepared data gone, a single-modality run preprocesses with its own modality, except on Eyecandies,
  whose classes always have both and whose RGB is masked by the cloud (algorithms.md §1.4)."""
  config = synthetic.get_config()
  config.modalities = 'rgb'
  assert detector._data_modalities(config, Workdir(tmp_path), 'cube') == ('rgb',)
  config.dataset = 'eyecandies'
  assert detector._data_modalities(config, Workdir(tmp_path), 'CandyCane') == ('rgb', 'xyz')
  config.dataset, config.modalities = 'synthetic', 'rgb+xyz'
  assert detector._data_modalities(config, Workdir(tmp_path), 'cube') == ('rgb', 'xyz')
