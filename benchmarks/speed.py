"""Times each pipeline stage, ours (JAX) against a PyTorch CPU version of what the reference runs, in one process.

  python -m benchmarks.speed                       # full sizes (several minutes on 2 cores)
  python -m benchmarks.speed --quick               # tiny sizes, 1 repetition (smoke run / test)
  python -m benchmarks.speed --only vit,knn --repeats 5 --out BENCHMARKS.md

Every stage is called once to warm up (JAX: compile; "first − median" is reported as the compile estimate), then
`--repeats` times; the table shows medians and ratio = reference / ours (> 1: ours is faster). The stages and their
PyTorch references are in `benchmarks/speed_stages.py`. It also measures the float32 matmul peak of this machine
(JAX and torch), reports the matmul-bound stages as a fraction of it (analytic FLOP counts), and the peak RSS of
building a full-size PCD bank (`benchmarks/bank_memory.py` in a subprocess). Thread pools and BLAS environment
variables are left at their defaults.
"""
import argparse
import dataclasses
import datetime
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import flax
import jax
import numpy as np
import torch

from benchmarks.speed_stages import BENCHES, FULL, QUICK, Limit, Row
from g2sf_jax import io

# bank_rss runs first: a child process inherits its parent's RSS high-water mark (Linux copies it into the child's
# mm at fork and keeps it across exec), so after the big stages the subprocess would report this process's peak.
STAGES = ('bank_rss', 'peak', 'clean', 'group', 'vit', 'point_mae', 'extract', 'coreset', 'knn', 'aupro',
          'lspn')
LOAD_LIMIT = 1.5  # a stage starting above this 1-minute load average shared the machine with another job
QUIET_LOAD, QUIET_WAIT_S = 1.0, 90  # before each stage, wait up to this long for the load to fall below QUIET_LOAD
# Everything below this line of an existing --out file is kept when the file is regenerated.
KEEP_MARKER = '<!-- Hand-written notes below this line are kept when the file is regenerated. -->'


def run(only: Sequence[str] = STAGES, quick: bool = False, repeats: int = 3,
        log: Callable[[str], None] = print) -> tuple[list[Row], list[Limit]]:
  """Runs the chosen stages in STAGES order → (stage rows, machine-limit rows)."""
  unknown = set(only) - set(STAGES)
  if unknown:
    raise ValueError(f'--only: unknown stage(s) {sorted(unknown)}; choose from {", ".join(STAGES)}')
  sizes = QUICK if quick else FULL
  rows, limits = [], []
  for stage in STAGES:
    if stage not in only:
      continue
    if not quick:
      _wait_for_quiet()
    start, before = time.perf_counter(), os.getloadavg()[0]
    out = [dataclasses.replace(x, load=(before, os.getloadavg()[0])) for x in BENCHES[stage](sizes, repeats)]
    (limits if stage in ('peak', 'bank_rss') else rows).extend(out)
    log(f'[{stage}] done in {time.perf_counter() - start:.1f} s, load {before:.2f} → {out[-1].load[1]:.2f}')
  return rows, limits


def _wait_for_quiet() -> None:
  """The previous stage's own threads keep the 1-minute load average up for a minute: let it decay, so the load
  a stage starts at shows other jobs, not ours."""
  deadline = time.monotonic() + QUIET_WAIT_S
  while os.getloadavg()[0] > QUIET_LOAD and time.monotonic() < deadline:
    time.sleep(2)


# ---------------------------------------------------------------------------------------------------------------
# Report


def machine_info() -> dict[str, str]:
  cpu = 'unknown'
  with open('/proc/cpuinfo') as f:
    for line in f:
      if line.startswith('model name'):
        cpu = line.split(':', 1)[1].strip()
        break
  ram = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30
  return {'nproc': str(os.cpu_count()), 'cpu': cpu, 'ram': f'{ram:.1f} GiB', 'python': platform.python_version(),
          'jax': jax.__version__, 'flax': flax.__version__, 'torch': torch.__version__, 'numpy': np.__version__,
          'torch_threads': str(torch.get_num_threads()), 'jax_devices': ', '.join(map(str, jax.devices())),
          'niceness': str(os.nice(0))}


def _fmt(x: float, digits: int = 3) -> str:
  if not math.isfinite(x):
    return '–'
  if x >= 100:
    return f'{x:,.0f}'
  return f'{x:.{digits}g}'


def _percent(gflop: float, seconds: float, peak: float | None) -> str:
  if not peak or not math.isfinite(gflop):
    return '–'
  return f'{100 * gflop / seconds / peak:.0f}%'


def _load(load: tuple[float, float]) -> str:
  """`before → after` 1-minute load average, flagged when the stage started above LOAD_LIMIT (another job was
  running: the numbers are suspect). The after value includes the stage's own threads."""
  if not all(map(math.isfinite, load)):
    return '–'
  cell = f'{load[0]:.1f} → {load[1]:.1f}'
  return f'**{cell} ⚠**' if load[0] > LOAD_LIMIT else cell


def table(rows: Sequence[Row], limits: Sequence[Limit]) -> str:
  """The markdown tables (stage times, then machine limits) with numbered notes."""
  peak = {m.stage: m for m in limits}.get('peak')
  lines = ['| # | stage | ours (s) | ours compile ≈ (s) | reference (s) | ratio ref/ours | ours % of peak | '
           'ref % of peak | load | reference |', '|---|---|---:|---:|---:|---:|---:|---:|---|---|']
  for i, r in enumerate(rows, 1):
    verdict = '' if r.ratio >= 1 else ' (ours slower)'
    lines.append(f'| {i} | {r.what} | {_fmt(r.ours_s)} | {_fmt(r.compile_s, 2)} | {_fmt(r.ref_s)} | '
                 f'**{r.ratio:.2f}×**{verdict} | {_percent(r.gflop, r.ours_s, peak and peak.jax_value)} | '
                 f'{_percent(r.gflop, r.ref_s, peak and peak.torch_value)} | {_load(r.load)} | {r.reference} |')
  lines += ['', 'Notes:', '']
  lines += [f'{i}. {r.note}' + (f' Analytic work: {r.gflop:,.1f} GFLOP.' if math.isfinite(r.gflop) else '')
            for i, r in enumerate(rows, 1) if r.note or math.isfinite(r.gflop)]
  if limits:
    lines += ['', '| measurement | JAX | torch | unit | load | note |', '|---|---:|---:|---|---|---|']
    lines += [f'| {m.what} | {_fmt(m.jax_value)} | {_fmt(m.torch_value)} | {m.unit} | {_load(m.load)} | {m.note} |'
              for m in limits]
  return '\n'.join(lines)


def markdown(rows: Sequence[Row], limits: Sequence[Limit], info: dict[str, str], command: str,
             load: tuple[tuple[float, ...], tuple[float, ...]], repeats: int, quick: bool) -> str:
  # Outside --quick every stage waits for a quiet machine first: only a stage that started loaded says another job ran.
  loaded = any(r.load[0] > LOAD_LIMIT for r in (*rows, *limits))
  header = [
      '# Benchmarks: g2sf-jax against PyTorch CPU references', '',
      f'Generated by `{command}` on {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}'
      + (' (**--quick sizes, not representative**)' if quick else '') + '.', '',
      f'* Machine: {info["nproc"]} CPUs ({info["cpu"]}), {info["ram"]} RAM; JAX devices: {info["jax_devices"]}; '
      f'torch intra-op threads: {info["torch_threads"]}; niceness {info["niceness"]}.',
      f'* Versions: Python {info["python"]}, jax {info["jax"]}, flax {info["flax"]}, torch {info["torch"]}, '
      f'numpy {info["numpy"]}. Thread pools and BLAS variables at their defaults.',
      f'* Load average (1/5/15 min) at start {"/".join(f"{x:.2f}" for x in load[0])}, at end '
      f'{"/".join(f"{x:.2f}" for x in load[1])}'
      + ('. **The machine was shared with other running jobs, so absolute times are noisy and both columns are '
         'slowed.**' if loaded else '.'),
      f'* Each stage: one warm-up call (JAX compiles there; "compile ≈" = first call − median), then the median of '
      f'{repeats} calls. Ratio = reference / ours, so > 1 means ours (JAX) is faster. "% of peak" = analytic '
      'FLOPs / time / the float32 matmul peak measured below for the same framework. "load" = the 1-minute load '
      f'average before → after the stage (each stage waits up to {QUIET_WAIT_S} s for it to fall below '
      f'{QUIET_LOAD}; the after value includes the stage\'s own threads); ⚠ marks a stage that started above '
      f'{LOAD_LIMIT} (another job was running: rerun it with `--only`).', '']
  return '\n'.join(header) + '\n' + table(rows, limits) + '\n'


def write_markdown(path: Path, text: str) -> None:
  """Writes `text` atomically, keeping whatever follows KEEP_MARKER in an existing file."""
  kept = ''
  if path.exists():
    old = path.read_text()
    if KEEP_MARKER in old:
      kept = old[old.index(KEEP_MARKER) + len(KEEP_MARKER):]
  with io.atomic_write(path, 'w') as f:
    f.write(text + '\n' + KEEP_MARKER + (kept or '\n'))


def main(argv: Sequence[str] | None = None) -> tuple[list[Row], list[Limit]]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true', help='tiny sizes and 1 repetition (smoke run)')
  parser.add_argument('--only', default=','.join(STAGES), help=f'comma-separated subset of {",".join(STAGES)}')
  parser.add_argument('--repeats', type=int, default=None, help='timed calls per stage after the warm-up '
                      '(default 3; 1 with --quick)')
  parser.add_argument('--out', type=Path, default=None, help='also write the markdown report here')
  args = parser.parse_args(argv)
  repeats = args.repeats or (1 if args.quick else 3)
  if repeats < 1:
    parser.error('--repeats must be >= 1')
  only = [s.strip() for s in args.only.split(',') if s.strip()]
  info = machine_info()
  load_start = os.getloadavg()
  rows, limits = run(only, args.quick, repeats, log=lambda s: print(s, file=sys.stderr, flush=True))
  load = (load_start, os.getloadavg())
  argv_used = sys.argv[1:] if argv is None else list(argv)
  nice = f'nice -n {info["niceness"]} ' if info['niceness'] != '0' else ''
  command = f'{nice}python -m benchmarks.speed {shlex.join(argv_used)}'.strip()
  text = markdown(rows, limits, info, command, load, repeats, args.quick)
  print(text)
  if args.out:
    write_markdown(args.out, text)
  return rows, limits


if __name__ == '__main__':
  main()
