"""Runs an experiment: every selected stage for every class of its config.

  python -m experiments.run --config synthetic
  python -m experiments.run --config mvtec --config.raw_dir=/data/mvtec_3d --config.classes=bagel,tire
  python -m experiments.run --config synthetic --config.stages=evaluate

`--config NAME` picks `experiments/configs/NAME.py` (a path to any config file works too; without it, `synthetic`,
which needs no download); `--config.a.b=value` overrides a field. Stages cache their outputs in `config.workdir`
and are skipped when their inputs did not change,
so an interrupted run resumes where it stopped.

Several processes (hosts) run one experiment together when each is started with the same command plus
`--config.distributed.coordinator=HOST:PORT --config.distributed.num_processes=N --config.distributed.process_id=I`
(or with none of them under SLURM, Open MPI or on a TPU pod, whose environment JAX reads); see the README.
"""
import importlib.util
import logging as std_logging
import os
import sys
import traceback
from pathlib import Path

from absl import app
from absl import logging
from ml_collections import config_flags

CONFIG_DIR = Path(__file__).resolve().parent / 'configs'

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config name (experiments/configs/NAME.py) or file.')


DEFAULT_CONFIG = 'synthetic'


def resolve_config_argv(argv: list[str]) -> list[str]:
  """Rewrites `--config NAME` / `--config=NAME` into the config file's path, which absl expects; no `--config`
  means `--config synthetic`."""
  out = list(argv)
  if not any(a == '--config' or a.startswith('--config=') for a in out[1:]):
    out.insert(1, f'--config={DEFAULT_CONFIG}')
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
  from experiments import config_check, runner
  from g2sf_jax import distributed, home
  from g2sf_jax.errors import UserError
  config = _CONFIG.value
  distributed.enable_compilation_cache(home.compilation_cache_dir())
  multi = False
  try:
    config_check.validate(config)  # before joining other processes: a typo fails here, in a second
    multi = distributed.initialize(**config.distributed)
    runner.run(config)
  except UserError as e:  # the user's to fix: one line, also in run.log; anything else keeps its traceback
    log = std_logging.getLogger('g2sf')
    if log.handlers:  # the run got as far as opening its run.log: the line goes there and to the terminal
      log.error('error: %s', e)
    else:
      print(f'error: {e}', file=sys.stderr)
    _exit(1, multi)
  except BaseException:
    if not multi:
      raise
    traceback.print_exc()
    _exit(1, multi)


def _exit(code: int, multi: bool) -> None:
  """Ends the process. In a multi-process run a normal exit would wait at JAX's shutdown barrier for processes that
  are themselves waiting for this one; ending at once lets their heartbeat monitor stop them within
  `distributed.heartbeat_timeout_s`."""
  if not multi:
    sys.exit(code)
  for handler in std_logging.getLogger('g2sf').handlers:
    handler.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


if __name__ == '__main__':
  sys.argv = resolve_config_argv(sys.argv)
  check_overrides(sys.argv)
  app.run(main)
