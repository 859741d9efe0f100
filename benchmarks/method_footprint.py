"""What each method keeps and how fast it scores, on a finished work directory: the scorer's state (its arrays in
memory), scoring time per sample (features given, as in `evaluate`), and the scoring process's peak RSS.

  python -m benchmarks.method_footprint [--workdir runs/synthetic] [--class_name cube] [--methods g2sf,btf,m3dm,cfm]

CFM's claim against memory-bank methods is speed and memory: it keeps two small MLPs where PatchCore-style methods
keep coresets of patch features. Each method is measured in a fresh subprocess (so the RSS is its own) that loads
the method's scorer from the work directory, scores the class's cached test features once (compilation), then
`--repeats` more times; the median is reported per sample, against G²SF's in the same run. The backbones are
loaded for every method (CFM's scorer computes 224² point features from the test clouds), so the RSS includes
them alike. A last table gives the
state at MVTec size from the config's formulas (a class with `--full_train` training samples), since the
synthetic default's banks are tiny.
"""
import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def state_bytes(obj, seen: set | None = None) -> int:
  """Bytes of every distinct array reachable from `obj` (a scorer: its banks, networks, normalisers): what the
  method holds in memory to score a sample."""
  import jax
  import numpy as np
  seen = set() if seen is None else seen
  if id(obj) in seen:
    return 0
  seen.add(id(obj))
  if isinstance(obj, (np.ndarray, jax.Array)):
    return int(obj.nbytes)
  if isinstance(obj, dict):
    return sum(state_bytes(v, seen) for v in obj.values())
  if isinstance(obj, (list, tuple)):
    return sum(state_bytes(v, seen) for v in obj)
  if hasattr(obj, '__dict__') and not isinstance(obj, type) and type(obj).__module__.startswith('g2sf_jax'):
    return sum(state_bytes(v, seen) for v in vars(obj).values())
  return 0


def measure(workdir: str, class_name: str, method: str, repeats: int) -> dict:
  """One method, in this process: state bytes, scoring seconds per sample (median of `repeats`), peak RSS."""
  from benchmarks import timing
  from g2sf_jax import detector, features
  from g2sf_jax.data import prepared

  run = detector.Run(workdir, method)
  config = run.config
  det = detector.Detector.load(workdir, class_name, method)
  state = state_bytes(det.scorer)
  feats = features.load_cached(run.output(class_name, 'extract') / 'test')
  missing = [k for k in det.needs if k not in feats]  # CFM's 224² point features come from the clouds
  if missing:
    test = prepared.load_split(config.dataset, run.output(class_name, 'prepare'), class_name, 'test')
    feats.update(det.features([test[i] for i in range(len(test))], missing))
  n = next(iter(feats.values())).shape[0]
  batch = config.batch_size

  def score_all():
    for start in range(0, n, batch):
      det.scores({k: v[start:start + batch] for k, v in feats.items()})

  first, median = timing.timed(score_all, repeats)
  return {'method': method, 'rows': list(det.rows), 'state_bytes': state, 'samples': n,
          'first_s': first, 'per_sample_s': median / n,
          'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def full_size_state(full_train: int, fraction: float = 0.1) -> list[tuple[str, str]]:
  """G²SF's coresets against CFM's two MLPs for one class of `full_train` training samples at the paper's sizes:
  IMG 784 × 768 and PCD 3136 × 1152 patch features per sample (algorithms.md §2), 10% coresets, float32; CFM's MLPs map
  768 ↔ 1152 through two hidden layers of (in + out) // 2 units (`methods/cfm/mlp.py`)."""
  img, pcd = int(full_train * 784 * fraction), int(full_train * 3136 * fraction)
  bank = (img * 768 + pcd * 1152) * 4
  hidden = (768 + 1152) // 2
  params = 2 * sum(a * b + b for a, b in ((768, hidden), (hidden, hidden), (hidden, 1152)))
  return [('g2sf (IMG and PCD coresets, plus the small LSPN)',
           f'{img:,} × 768 + {pcd:,} × 1152 floats = {bank / 2**20:,.0f} MiB'),
          ('cfm (2D→3D and 3D→2D MLPs)', f'{params:,} parameters = {params * 4 / 2**20:.1f} MiB '
                                         f'({bank / (params * 4):.0f}× less)')]


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--workdir', default='runs/synthetic')
  p.add_argument('--class_name', default='cube')
  p.add_argument('--methods', default='g2sf,btf,m3dm,cfm')
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--full_train', type=int, default=244, help='training samples of the full-size class (bagel: 244)')
  p.add_argument('--one', help=argparse.SUPPRESS)  # the subprocess: measure this method, print JSON
  args = p.parse_args(argv)
  if args.one:
    print(json.dumps(measure(args.workdir, args.class_name, args.one, args.repeats)))
    return
  results = []
  for method in args.methods.split(','):
    done = subprocess.run([sys.executable, '-m', 'benchmarks.method_footprint', '--workdir', args.workdir,
                           '--class_name', args.class_name, '--repeats', str(args.repeats), '--one', method],
                          cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
      raise SystemExit(f'{method}: failed:\n{done.stderr[-2000:]}')
    results.append(json.loads(done.stdout.strip().splitlines()[-1]))
  ref = next((r for r in results if r['method'] == 'g2sf'), results[0])
  print(f'Class {args.class_name} of {args.workdir}, {ref["samples"]} test samples, features cached; '
        f'median of {args.repeats} passes after one warm-up pass.\n')
  print('| method | rows | scorer state | vs G²SF | scoring per sample | speed vs G²SF | first pass (compiles) | '
        'peak RSS |\n|---|---|---:|---:|---:|---:|---:|---:|')
  for r in results:
    print(f'| {r["method"]} | {", ".join(r["rows"])} | {r["state_bytes"] / 2**20:.2f} MiB | '
          f'{r["state_bytes"] / ref["state_bytes"]:.3f}× | {r["per_sample_s"] * 1e3:.1f} ms | '
          f'{ref["per_sample_s"] / r["per_sample_s"]:.2f}× | {r["first_s"]:.1f} s | {r["peak_rss_gib"]:.2f} GiB |')
  print(f'\nState at MVTec size ({args.full_train} training samples, the paper configs):\n\n'
        '| method | state |\n|---|---|')
  for name, state in full_size_state(args.full_train):
    print(f'| {name} | {state} |')


if __name__ == '__main__':
  main()
