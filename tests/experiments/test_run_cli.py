import pytest

from experiments import run


def test_config_name_resolves_to_file():
  argv = run.resolve_config_argv(['run', '--config', 'synthetic', '--config.classes=cube'])
  assert argv[2].endswith('experiments/configs/synthetic.py')
  assert argv[3] == '--config.classes=cube'
  argv = run.resolve_config_argv(['run', '--config=mvtec'])
  assert argv[1].endswith('experiments/configs/mvtec.py')


def test_unknown_config_lists_known_ones():
  with pytest.raises(SystemExit, match="unknown config 'mvtek'.*'mvtec'"):
    run.resolve_config_argv(['run', '--config', 'mvtek'])


@pytest.mark.parametrize('name', ['synthetic', 'mvtec', 'eyecandies', 'btf', 'm3dm', 'cfm', 'm3dm_synthetic',
                                  'cfm_synthetic'])
def test_configs_load_with_docstrings(name):
  import importlib
  from experiments import pipeline
  from g2sf_jax import methods
  module = importlib.import_module(f'experiments.configs.{name}')
  config = module.get_config()
  assert module.__doc__ and 'Run:' in module.__doc__
  assert config.stages == 'all' and config.method in methods.REGISTRY
  assert pipeline.stage_graph(methods.get(config.method), config)[-1].name == 'evaluate'
  assert config.synthesis.num_sources == (24 if name == 'eyecandies' else 8)  # SPEC §4.2
  if name in ('m3dm', 'cfm'):
    assert config.point_mae.num_group == 1024  # M3DM's and CFM's grouping
