"""Runs an experiment: every selected stage for every class of its config.

  python -m experiments.run --config synthetic
  python -m experiments.run --config mvtec --config.raw_dir=/data/mvtec_3d --config.classes=bagel,tire
  python -m experiments.run --config synthetic --config.stages=evaluate

`--config NAME` picks `experiments/configs/NAME.py` (a path to any config file works too); `--config.a.b=value`
overrides a field. Stages cache their outputs in `config.workdir` and are skipped when their inputs did not change,
so an interrupted run resumes where it stopped.
"""
import importlib.util
import logging as std_logging
import sys
from pathlib import Path

from absl import app
from absl import logging
from ml_collections import config_flags

CONFIG_DIR = Path(__file__).resolve().parent / 'configs'

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config name (experiments/configs/NAME.py) or file.')


def resolve_config_argv(argv: list[str]) -> list[str]:
  """Rewrites `--config NAME` / `--config=NAME` into the config file's path, which absl expects."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg == '--config' and i + 1 < len(out):
      out[i + 1] = _config_path(out[i + 1])
    elif arg.startswith('--config='):
      out[i] = '--config=' + _config_path(arg.split('=', 1)[1])
  return out


def _config_path(name: str) -> str:
  if name.endswith('.py') or '/' in name:
    return name
  path = CONFIG_DIR / f'{name}.py'
  if not path.is_file():
    known = sorted(p.stem for p in CONFIG_DIR.glob('*.py') if p.stem not in ('__init__', 'common'))
    raise SystemExit(f'unknown config {name!r}: expected one of {known} or a path to a config file')
  return str(path)


def check_overrides(argv: list[str]) -> None:
  """Every `--config.a.b=…` must name a field of the chosen config; else exit with the closest fields.

  (ml_collections would fail with a traceback inside flag parsing.)
  """
  path = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if path is None and '--config' in argv[:-1]:
    path = argv[argv.index('--config') + 1]
  if path is None:
    return
  spec = importlib.util.spec_from_file_location('g2sf_config_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  from experiments import config_check
  for arg in argv:
    if arg.startswith('--config.'):
      message = config_check.unknown_override(config, arg[len('--config.'):].split('=', 1)[0])
      if message:
        raise SystemExit(f'error: {message}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax and jax log every checkpoint and backend probe at INFO
  from experiments import pipeline
  from g2sf_jax import distributed, home
  from g2sf_jax.errors import UserError
  distributed.enable_compilation_cache(home.compilation_cache_dir())
  try:
    pipeline.run(_CONFIG.value)
  except UserError as e:  # the user's to fix: one line, also in run.log; anything else keeps its traceback
    log = std_logging.getLogger('g2sf')
    if log.handlers:  # the run got as far as opening its run.log: the line goes there and to the terminal
      log.error('error: %s', e)
    else:
      print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  sys.argv = resolve_config_argv(sys.argv)
  check_overrides(sys.argv)
  app.run(main)
