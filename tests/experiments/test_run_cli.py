import pytest

from experiments import run


def test_config_name_resolves_to_file():
  argv = run.resolve_config_argv(['run', '--config', 'synthetic', '--config.classes=cube'])
  assert argv[2].endswith('experiments/configs/synthetic.py')
  assert argv[3] == '--config.classes=cube'
  argv = run.resolve_config_argv(['run', '--config=mvtec'])
  assert argv[1].endswith('experiments/configs/mvtec.py')


def test_no_config_means_synthetic_and_aupro_thresholds_takes_exact(tmp_path):
  """`python -m experiments.run` alone runs the synthetic default; `--config.metrics.aupro_thresholds=exact` parses
  (the field takes an int or 'exact'), so the run gets as far as the bad stage name."""
  import subprocess
  import sys
  from pathlib import Path
  assert run.resolve_config_argv(['run', '--config.classes=cube'])[1].endswith('experiments/configs/synthetic.py')
  res = subprocess.run([sys.executable, '-m', 'experiments.run', '--config.metrics.aupro_thresholds=exact',
                        f'--config.workdir={tmp_path / "w"}', '--config.stages=bogus'], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2], timeout=300)
  assert res.returncode == 1 and "error: config.stages: unknown ['bogus']" in res.stderr, res.stderr[-2000:]
  assert not (tmp_path / 'w').exists()


def test_unknown_config_lists_known_ones():
  with pytest.raises(SystemExit, match="unknown config 'mvtek'.*'mvtec'"):
    run.resolve_config_argv(['run', '--config', 'mvtek'])


@pytest.mark.parametrize('name', ['synthetic', 'mvtec', 'eyecandies', 'btf', 'm3dm', 'cfm', 'm3dm_synthetic',
                                  'cfm_synthetic'])
def test_configs_load_with_docstrings(name):
  import importlib
  from experiments import stages
  from g2sf_jax import methods
  module = importlib.import_module(f'experiments.configs.{name}')
  config = module.get_config()
  assert module.__doc__ and 'Run:' in module.__doc__
  assert config.stages == 'all' and config.method in methods.REGISTRY
  assert stages.stage_graph(methods.get(config.method), config)[-1].name == 'evaluate'
  assert config.synthesis.num_sources == (24 if name == 'eyecandies' else 8)  # algorithms.md §4.2
  if name in ('m3dm', 'cfm'):
    assert config.point_mae.num_group == 1024  # M3DM's and CFM's grouping
