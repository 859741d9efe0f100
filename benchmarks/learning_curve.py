"""How many good parts does a method need? Every method trained on K good scans per class, for each K.

  python -m benchmarks.learning_curve [--ks 5,10,25,50,all] [--n_train 50] [--methods g2sf,btf,m3dm,cfm] \
      [--seed 0] [--workdir runs/learning_curve] [--set synthetic.size=160 ...]

The synthetic default with `synthetic.n_train` good training scans per class (and a quarter as many validation
scans for the calibration); for each K, `train.max_samples=K` picks a seeded subset of them (`all`: every one).
Each method runs its synthetic config (G²SF: `synthetic`, whose IMG and PCD rows are the PatchCore baselines; BTF:
`btf`; M3DM: `m3dm_synthetic`; CFM: `cfm_synthetic`) in one shared work directory, so prepared data and the features
of each K are computed once. Prints, per row and K, the mean over classes of the image AUROC, AUPRO@30% and the
false-reject rate at the calibrated threshold, and writes them to `<workdir>/learning_curve.{md,json}`. `--set`
overrides any config field of every run (for a quick look at smaller scans).
"""
import argparse
import json
import time
from pathlib import Path

from g2sf_jax import io

CONFIGS = {'g2sf': 'synthetic', 'btf': 'btf', 'm3dm': 'm3dm_synthetic', 'cfm': 'cfm_synthetic'}


def _config(method: str, k: int, args: argparse.Namespace):
  import importlib
  c = importlib.import_module(f'experiments.configs.{CONFIGS[method]}').get_config()
  c.workdir, c.seed = args.workdir, args.seed
  c.synthetic.n_train = args.n_train
  c.train.max_samples = k
  for field in args.set:
    key, _, value = field.partition('=')
    *parents, name = key.split('.')
    section = c
    for part in parents:
      section = section[part]
    old = section[name]
    section[name] = value.lower() in ('1', 'true') if isinstance(old, bool) else type(old)(value)
  return c


def measure(args: argparse.Namespace) -> dict:
  """{row: {K: {'I-AUROC', 'AUPRO@30%', 'false_reject_rate', 'minutes'}}} for every method and K. A row two methods
  report (M3DM's IMG and PCD) is the first method's (G²SF's PatchCore rows). A K the method cannot train on (e.g.
  fewer scans than M3DM's UFF batch) gets {'error': the one-line reason} in its rows."""
  from experiments import runner
  from g2sf_jax import methods
  from g2sf_jax.errors import UserError
  out: dict[str, dict[str, dict]] = {}
  owner: dict[str, str] = {}
  for method in args.methods:
    for k in args.ks:
      config = _config(method, 0 if k == 'all' else int(k), args)
      rows = [r for r in methods.get(config.method).rows(config) if owner.setdefault(r, method) == method]
      start = time.perf_counter()
      try:
        table = runner.run(config)
      except UserError as e:
        print(f'{method} K={k}: {e}')
        for row in rows:
          out.setdefault(row, {})[k] = {'error': str(e)}
        continue
      minutes = (time.perf_counter() - start) / 60
      for row in rows:
        rates = table['decisions_mean'].get(row, {})
        out.setdefault(row, {})[k] = {'I-AUROC': table['mean'][row].get('I-AUROC'),
                                      'AUPRO@30%': table['mean'][row].get('AUPRO@30%'),
                                      'false_reject_rate': rates.get('false_reject_rate'),
                                      'minutes': round(minutes, 2)}
  return out


def markdown(curve: dict, ks: list[str], n_train: int) -> str:
  def cell(v):
    return '—' if v is None else f'{v:.3f}'
  head = ' | '.join(f'K={k}' if k != 'all' else f'all ({n_train})' for k in ks)
  lines = ['I-AUROC / AUPRO@30% / false-reject rate at the calibrated threshold, mean of the classes', '',
           f'| Row | {head} |', '|---|' + '---|' * len(ks)]
  errors = {}
  for row, per_k in curve.items():
    cells = []
    for k in ks:
      if 'error' in per_k[k]:
        mark = errors.setdefault(per_k[k]['error'], '*' * (len(errors) + 1))
        cells.append(f'not trained{mark}')
      else:
        cells.append(' / '.join(cell(per_k[k][m]) for m in ('I-AUROC', 'AUPRO@30%', 'false_reject_rate')))
    lines.append(f'| {row} | ' + ' | '.join(cells) + ' |')
  lines += [''] + [f'{mark} {reason}' for reason, mark in errors.items()] if errors else []
  return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--ks', default='5,10,25,50,all', help='training set sizes; "all" = every training scan')
  p.add_argument('--n_train', type=int, default=50, help='good training scans generated per class')
  p.add_argument('--methods', default='g2sf,btf,m3dm,cfm', help=f'any of {",".join(CONFIGS)}')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--workdir', default='runs/learning_curve')
  p.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE', help='a config override for every run')
  args = p.parse_args(argv)
  args.ks = [k.strip() for k in args.ks.split(',') if k.strip()]
  args.methods = [m.strip() for m in args.methods.split(',') if m.strip()]
  for k in args.ks:
    if k != 'all' and not (k.isdigit() and 0 < int(k) <= args.n_train):
      p.error(f'--ks: {k!r} is not "all" or a count in 1..{args.n_train} (--n_train)')
  for m in args.methods:
    if m not in CONFIGS:
      p.error(f'--methods: unknown method {m!r}; expected some of {",".join(CONFIGS)}')
  for field in args.set:
    try:
      _config('btf', 1, argparse.Namespace(**{**vars(args), 'set': [field]}))
    except (KeyError, AttributeError, ValueError) as e:
      p.error(f'--set {field}: not a config field and a value of its type ({e})')
  curve = measure(args)
  text = markdown(curve, args.ks, args.n_train)
  print(text)
  Path(args.workdir).mkdir(parents=True, exist_ok=True)
  with io.atomic_write(Path(args.workdir) / 'learning_curve.md', 'w') as f:
    f.write(f'python -m benchmarks.learning_curve --ks {",".join(args.ks)} --n_train {args.n_train} --methods '
            f'{",".join(args.methods)} --seed {args.seed}' + ''.join(f' --set {f}' for f in args.set) + '\n\n' + text)
  with io.atomic_write(Path(args.workdir) / 'learning_curve.json', 'w') as f:
    json.dump(curve, f, indent=1)
  return curve


if __name__ == '__main__':
  main()
