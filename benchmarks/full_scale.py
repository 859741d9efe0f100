"""Full-scale rehearsal: one synthetic class at MVTec 3D-AD size through the `mvtec` pipeline with the paper's
architecture (DINO ViT-B/8 and PointMAE 512×128, random weights in the official layouts converted by `ports/`,
10% coresets, 800 synthetic anomalies, the reference's LSPN schedule).

  python -m benchmarks.full_scale                      # 200 train, 100 test, 800 anomalies: every stage measured
  python -m benchmarks.full_scale --fraction 0.1       # a tenth of the samples and anomalies; full size extrapolated

The class is MVTec-sized: `--train` good training samples (plus the synthetic layout's `train // 4` validation samples),
`--test` test samples, `--size`² rgb/xyz, framed with `--fov` so that ~25k points survive the algorithms.md §1.2
cleaning at 224² as on MVTec. Every stage runs as its own `python -m experiments.run --config mvtec
--config.stages=<stage>` process in `--workdir`, so its wall time (start-up and compilation included) and peak RSS are
its own; the stage's own time is read from its completion marker. Re-running the command resumes: stages that are up to
date are reported from their markers (no RSS then).

Below fraction 1 the samples and anomalies are scaled by f (and with `--epoch_fraction e` the LSPN runs e of its
80 epochs); every other size is the paper's. Each stage's time is extrapolated to full size by its cost law in f,
printed in the table: linear (prepare, extract, LSPN training, also × 1/e), quadratic (the greedy coreset: k ∝ n
iterations over n rows), or between the two where a linear part (synthesising and extracting the anomalies, the
test features) meets a quadratic one (their searches in coresets that grow with n): those get a range. Peak RSS
is the one measured at the fraction run. The LSPN batch is min(0.7·M/20, 8,192) for M fusion rows (algorithms.md §4.5a):
a fraction with fewer than ~234k rows trains with smaller batches than the full class, and its B×B consistency
term grows faster than linearly with B, so the linear law then underestimates training (the command says so;
`python -m benchmarks.speed --only lspn` times one full-size step). On a GPU machine the same command runs
on the GPU (JAX's default backend); the dataset and weights are made on the host, by `config.workers` processes. A
GPU machine without network access whose python has jax, flax, torch and scipy gets the rest as wheels:
`bash scripts/gpu_wheels.sh` here, then `bash scripts/gpu_full_scale.sh` there (it checks the imports and the GPU
first and stops the rehearsal after `LIMIT` seconds, printing the stages that finished).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHOD = 'g2sf'

# (lowest, highest) exponent of each stage's cost in the fraction f of the samples (see the module docstring).
COST_LAW = {'prepare': (1, 1), 'extract': (1, 1), 'banks': (2, 2), 'fusion_data': (1, 2), 'train': (1, 1),
            'calibrate': (1, 2), 'evaluate': (1, 2)}


def random_state(table: dict, seed: int) -> dict:
  """Random tensors for every key of a `ports` table, at its shapes: 1/√fan-in weights, norm scales near 1,
  positive batch-norm variances, so the converted network computes finite, non-trivial features."""
  import numpy as np
  import torch
  gen = torch.Generator().manual_seed(seed)
  state = {}
  for key, entry in table.items():
    t = torch.randn(entry.shape, generator=gen)
    if key.endswith('running_var'):
      t = 1.0 + 0.2 * t.abs()
    elif key.endswith('running_mean') or key.endswith('bias'):
      t = 0.1 * t
    elif len(entry.shape) == 1:  # LayerNorm / BatchNorm scale
      t = 1.0 + 0.2 * t
    elif key in ('cls_token', 'pos_embed'):
      t = 0.5 * t
    else:
      t = t * float(np.prod(entry.shape[1:])) ** -0.5
    state[key] = t
  return state


def convert_random_weights(out_dir: Path, seed: int) -> dict[str, Path]:
  """DINO ViT-B/8 and Point-MAE checkpoints with random weights, saved as the official files are laid out
  (DINO: the flat backbone dict; Point-MAE: `{'base_model': {'module.MAE_encoder.…'}}`) and converted by the
  `ports` command-line entry points into `out_dir/<name>`; kept when already converted."""
  import torch
  from ports import dino_vit, point_mae
  done = {}
  for name, port, wrap in (('dino_vit_b8', dino_vit, lambda s: s),
                           ('point_mae', point_mae,
                            lambda s: {'base_model': {f'module.MAE_encoder.{k}': v for k, v in s.items()}})):
    target = out_dir / name
    if not (target / 'meta.json').is_file() and not any(target.glob('*')):
      out_dir.mkdir(parents=True, exist_ok=True)
      with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        src = Path(tmp) / f'{name}.pth'
        torch.save(wrap(random_state(port.table(), seed)), src)
        if port.main([str(src), str(target)]) != 0:
          raise RuntimeError(f'ports.{port.__name__} failed on {src}')
    done[name] = target
  return done


def scaled(count: int, fraction: float) -> int:
  return max(1, round(count * fraction))


def overrides(args: argparse.Namespace, checkpoints: dict[str, Path]) -> dict:
  """The config fields (flattened names) that turn the `mvtec` config into this rehearsal."""
  f = args.fraction
  flags = {
      'dataset': 'synthetic', 'method': METHOD, 'workdir': str(args.workdir / 'run'), 'seed': args.seed,
      'synthetic.classes': args.class_name, 'synthetic.n_train': scaled(args.train, f),
      'synthetic.n_test': scaled(args.test, f), 'synthetic.size': args.size, 'synthetic.fov': args.fov,
      'synthesis.num_anomalies': scaled(args.anomalies, f), 'g2sf.epochs': scaled(80, args.epoch_fraction),
  }
  flags.update({f'checkpoints.{k}': str(v) for k, v in checkpoints.items()})
  return flags


def stage_names_and_markers(fields: dict) -> list[tuple[str, Path]]:
  """(stage name, the file its publication writes) in graph order, for the class, from the config the runs use."""
  from experiments import stages
  from experiments.configs import mvtec
  from g2sf_jax import methods
  from g2sf_jax.workdir import Workdir
  config = mvtec.get_config()
  config.update_from_flattened_dict(fields)
  graph = stages.stage_graph(methods.get(config.method), config)
  wd = Workdir(config.workdir)
  scope = lambda stage: config.synthetic.classes if stage.scope == 'class' else ''
  return [(s.name, wd.home(s.folder(config), scope(s)).path / 'current.json') for s in graph]


def _in_child(call: str) -> str:
  """`call` (Python code using this module) in a fresh interpreter; its standard output. The parent stays small:
  on Linux a child starts with its parent's peak RSS, which would otherwise hide the stages' own peaks."""
  return subprocess.run([sys.executable, '-c', f'from benchmarks import full_scale\n{call}'], cwd=REPO, check=True,
                        stdout=subprocess.PIPE, text=True).stdout


def run_stage(name: str, flags: list[str], log: Path) -> dict:
  """One stage in its own process: wall seconds and peak RSS (GiB) of that process."""
  cmd = [sys.executable, '-m', 'experiments.run', '--config', 'mvtec', f'--config.stages={name}'] + flags
  start = time.perf_counter()
  with open(log, 'a') as out:
    out.write(f'$ {" ".join(cmd)}\n')
    out.flush()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - start
  if os.waitstatus_to_exitcode(status) != 0:
    raise RuntimeError(f'stage {name} failed (exit {os.waitstatus_to_exitcode(status)}); see {log}')
  return {'wall_s': wall, 'rss_gib': usage.ru_maxrss / 2 ** 20}


def extrapolate(seconds: float, fraction: float, law: int, epochs: float = 1.0) -> float:
  """The stage's time at full size from its time at `fraction` (and `epochs` of the LSPN schedule), by a cost law
  of exponent `law`."""
  return seconds / fraction ** law / epochs


def full_size(name: str, seconds: float, fraction: float, epoch_fraction: float) -> tuple[float, float]:
  """(low, high) full-size seconds of stage `name` measured at `seconds`."""
  epochs = epoch_fraction if name == 'train' else 1.0
  return tuple(extrapolate(seconds, fraction, law, epochs) for law in COST_LAW[name])


def _law(name: str, epoch_fraction: float) -> str:
  low, high = ('× (1/f)' + ('²' if e == 2 else '') for e in COST_LAW[name])
  text = low if low == high else f'{low} … {high}'
  return text + (f' × {1 / epoch_fraction:g} (epochs)' if name == 'train' and epoch_fraction < 1 else '')


def table(rows: list[dict], fraction: float, epoch_fraction: float = 1.0) -> str:
  """The markdown table: measured at the fraction, and at full size (extrapolated unless everything ran)."""
  full = fraction >= 1 and epoch_fraction >= 1
  head = ('| stage | stage time | process wall | peak RSS | '
          + ('' if full else 'cost law | full size (extrapolated) | ') + '\n')
  head += '|---' * (4 if full else 6) + '|\n'
  lines = []
  for r in rows:
    rss = f'{r["rss_gib"]:.2f} GiB' if r.get('rss_gib') is not None else '— (cached)'
    wall = f'{r["wall_s"]:.0f} s' if r.get('wall_s') is not None else '—'
    line = f'| {r["stage"]} | {r["seconds"]:.0f} s | {wall} | {rss} |'
    if not full:
      low, high = r['full_s']
      span = f'{low / 60:.1f} min' if low == high else f'{low / 60:.1f} – {high / 60:.1f} min'
      line += f' {_law(r["stage"], epoch_fraction)} | {span} |'
    lines.append(line)
  total = sum(r['seconds'] for r in rows)
  summary = f'| total | {total / 60:.1f} min | | |'
  if not full:
    low, high = (sum(r['full_s'][i] for r in rows) / 60 for i in (0, 1))
    summary += f' | {low:.1f} – {high:.1f} min |'
  return head + '\n'.join(lines + [summary]) + '\n'


def _batch_caveat(plan: list, args: argparse.Namespace) -> None:
  """Says when the fraction's LSPN batch is below the full class's, i.e. when the train row is an underestimate."""
  from experiments.configs import mvtec
  from g2sf_jax.methods.g2sf import train
  fusion = next((Path(m) for n, m in plan if n == 'fusion_data'), None)
  if args.fraction >= 1 or fusion is None or not fusion.is_file():
    return
  rows = json.loads(fusion.read_text())['info'].get('rows')
  requested = mvtec.get_config().g2sf.batch_size
  batch = train.batch_size(rows, requested) if rows else requested
  if batch < requested:
    print(f'note: the LSPN trained with batches of {batch} rows ({rows:,} fusion rows); the full class trains with '
          f'{requested}: the extrapolated train time is a lower bound')


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', type=Path, default=REPO / 'runs' / 'full_scale')
  parser.add_argument('--fraction', type=float, default=1.0, help='share of samples and anomalies to run, (0, 1]')
  parser.add_argument('--epoch_fraction', type=float, default=1.0, help='share of the 80 LSPN epochs to run, (0, 1]')
  parser.add_argument('--train', type=int, default=200)
  parser.add_argument('--test', type=int, default=100)
  parser.add_argument('--anomalies', type=int, default=800)
  parser.add_argument('--size', type=int, default=800)
  parser.add_argument('--fov', type=float, default=0.16)
  parser.add_argument('--class_name', default='cube')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  for name in ('fraction', 'epoch_fraction'):
    if not 0 < getattr(args, name) <= 1:
      parser.error(f'--{name} must be in (0, 1], got {getattr(args, name)}')
  for name, low in (('train', 1), ('test', 1), ('anomalies', 1), ('size', 64)):  # before minutes of weights
    if getattr(args, name) < low:
      parser.error(f'--{name} must be at least {low}, got {getattr(args, name)}')
  if not args.fov > 0:
    parser.error(f'--fov must be positive (metres across the view), got {args.fov}')
  args.workdir = args.workdir.absolute()
  args.workdir.mkdir(parents=True, exist_ok=True)
  *said, converted = _in_child(
      f'import json, pathlib\n'
      f'done = full_scale.convert_random_weights(pathlib.Path({str(args.workdir / "checkpoints")!r}), {args.seed})\n'
      f'print(json.dumps({{k: str(v) for k, v in done.items()}}))').splitlines()
  print('\n'.join(said), flush=True)  # what the ports wrote
  checkpoints = json.loads(converted)
  fields = overrides(args, checkpoints)
  flags = [f'--config.{k}={v}' for k, v in fields.items()]
  log = args.workdir / 'full_scale.log'
  print(f'full-scale rehearsal in {args.workdir} (fraction {args.fraction}, LSPN epochs {args.epoch_fraction}; '
        f'stage logs: {log})', flush=True)
  plan = json.loads(_in_child(f'import json\nprint(json.dumps([(n, str(m)) for n, m in '
                               f'full_scale.stage_names_and_markers({fields!r})]))').splitlines()[-1])
  summary = args.workdir / 'full_scale.json'
  earlier = {r['stage']: r for r in json.loads(summary.read_text())['rows']} if summary.is_file() else {}
  rows = []
  for name, marker in ((n, Path(m)) for n, m in plan):
    before = marker.stat().st_mtime_ns if marker.is_file() else None
    measured = run_stage(name, flags, log)  # the runner skips a stage that is up to date
    if not marker.is_file():
      raise RuntimeError(f'stage {name} wrote no marker {marker}; see {log}')
    if marker.stat().st_mtime_ns == before:  # cached: this process only checked it; keep what its run measured
      previous = earlier.get(name, {})
      same_run = previous.get('marker_mtime_ns') == before
      measured = {k: previous.get(k) for k in ('wall_s', 'rss_gib')} if same_run else {}
    seconds = json.loads(marker.read_text())['info']['seconds']
    rows.append(dict(stage=name, seconds=seconds, **measured, marker_mtime_ns=marker.stat().st_mtime_ns,
                     full_s=full_size(name, seconds, args.fraction, args.epoch_fraction)))
    rss = measured.get('rss_gib')
    print(f'{name}: {seconds:.1f} s' + (f', peak RSS {rss:.2f} GiB' if rss is not None else ' (cached)'), flush=True)
  print(table(rows, args.fraction, args.epoch_fraction))
  _batch_caveat(plan, args)
  with tempfile.NamedTemporaryFile('w', dir=args.workdir, delete=False) as tmp:
    json.dump({'args': {k: str(v) for k, v in vars(args).items()}, 'rows': rows}, tmp, indent=1)
  os.replace(tmp.name, summary)
  return 0


if __name__ == '__main__':
  sys.exit(main())
