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


@pytest.mark.parametrize('name', ['synthetic', 'mvtec', 'eyecandies', 'btf'])
def test_configs_load_with_docstrings(name):
  import importlib
  module = importlib.import_module(f'experiments.configs.{name}')
  config = module.get_config()
  assert module.__doc__ and 'Run:' in module.__doc__
  assert set(config.stages.split(',')) <= {'prepare', 'features', 'fusion_data', 'train', 'evaluate'}
