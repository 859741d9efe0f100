"""Wall time of `python -m experiments.predict` as a user runs it: a first call, a second call, and batch mode.

  python -m benchmarks.predict_speed [--workdir runs/synthetic] [--class_name cube] [--scans 24]

Each call is a fresh process on a finished work directory (`make run` makes one), scoring raw test files of the
class. The first call starts with an empty JAX compilation cache (a temporary `$G2SF_HOME`; the run's converted
checkpoints are found through its config.json, so nothing else changes), the second reuses what the first
cached; batch mode scores `--scans` scans in one process. Prints a Markdown table with the ratios.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _timed(cmd: list[str], env: dict) -> float:
  start = time.perf_counter()
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  if done.returncode != 0:
    raise SystemExit(f'{" ".join(cmd)} failed:\n{done.stderr[-2000:]}')
  return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--workdir', default='runs/synthetic')
  p.add_argument('--class_name', default='cube')
  p.add_argument('--scans', type=int, default=24, help='scans in the batch-mode call')
  p.add_argument('--method', default='g2sf',
                 help='the method whose detector to load (a work directory may hold several)')
  args = p.parse_args(argv)
  workdir = Path(args.workdir).absolute()
  raw = workdir / 'raw' / args.class_name / 'test'
  if not raw.is_dir():
    raise SystemExit(f'{raw}: not found; run `make run` (or pass --workdir of a finished synthetic run)')
  pairs = sorted((f / 'rgb' / p.name.replace('.tiff', '.png'), p) for f in sorted(raw.iterdir())
                 for p in sorted((f / 'xyz').glob('*.tiff')))[:args.scans]
  base = [sys.executable, '-m', 'experiments.predict', '--workdir', str(workdir), '--class_name', args.class_name,
          '--method', args.method]
  with tempfile.TemporaryDirectory() as tmp:
    env = dict(os.environ, G2SF_HOME=str(Path(tmp) / 'home'))
    one = base + ['--rgb', str(pairs[0][0]), '--xyz', str(pairs[0][1]), '--out', str(Path(tmp) / 'map.png')]
    first = _timed(one, env)
    second = _timed(one, env)
    many = base + ['--rgb', *[str(r) for r, _ in pairs], '--xyz', *[str(x) for _, x in pairs], '--out',
                   str(Path(tmp) / 'batch')]
    batch = _timed(many, env)
    shutil.rmtree(Path(tmp) / 'home' / 'jax_cache', ignore_errors=True)
  n = len(pairs)
  print(f'| call | wall time | ratio |\n|---|---|---|\n'
        f'| first call, one scan (empty compilation cache) | {first:.1f} s | 1.00× |\n'
        f'| second call, one scan (cache warm) | {second:.1f} s | {first / second:.2f}× faster |\n'
        f'| batch mode, {n} scans in one call | {batch:.1f} s ({batch / n:.2f} s per scan) | '
        f'{first * n / batch:.1f}× faster than {n} first calls |')


if __name__ == '__main__':
  main()
