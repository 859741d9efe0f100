"""Scores new scans with a trained work directory, from their raw files as they lie in the dataset layout.

  python -m experiments.predict --workdir runs/synthetic --class_name cube --rgb a.png --xyz a.tiff --out map.png
  python -m experiments.predict --workdir runs/synthetic --class_name cube --scans new/ --out results/
  python -m experiments.predict --workdir runs/eyecandies --class_name GummyBear --sample data/07 --out map.png

Each scan goes through the preprocessing `prepare` applied to the run's data (the dataset kind's `load_entry`:
MVTec 3D-AD and the synthetic set: plane removal, square padding and largest-cluster cleaning, SPEC §1.2;
Eyecandies: depth + pose → cloud with the table removed, SPEC §1.3), then the SPEC §1.4 load transforms, so a scan
gets the numbers the evaluation gives it.

One scan: prints the image score of every row as JSON and writes the anomaly map of the method's main row (FUS for
G²SF) as an 8-bit PNG, 0 and 255 being the lowest and highest map values of the class's test set (so maps of
different scans compare). `--size original` maps it back onto the input's pixels (undoing the square padding);
`--overlay` also writes the map over the RGB; `--npy` the raw float map.

Several scans (`--scans` folders holding `rgb/*.png` and/or `xyz/*.tiff` paired by name, an Eyecandies `data/`
folder, or several `--rgb` / `--xyz` / `--sample` values): one process, one compilation; `--out` is then a folder
that receives `scores.csv`, `scores.json` and `maps/<scan>.png`. A scan that cannot be scored honestly (too few
valid points, degenerate point features) is reported with status `unscorable` and its reason, never with a score.
Compiled programs are kept in JAX's persistent cache (`$G2SF_HOME/jax_cache`), so later calls start faster.
"""
import argparse
import csv
import io as stdio
import json
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from g2sf_jax import detector, distributed, home, io
from g2sf_jax.data import preprocessing
from g2sf_jax.errors import UserError
from g2sf_jax.workdir import Workdir


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog='python -m experiments.predict', description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True, help='work directory of a finished experiments.run')
  p.add_argument('--class_name', default='', help='class to score with (optional when the run has one class)')
  p.add_argument('--method', default='', help='method whose run to use (optional when the work directory has one)')
  p.add_argument('--rgb', nargs='+', default=[], help='RGB PNG(s) as in the dataset layout (MVTec-layout runs)')
  p.add_argument('--xyz', nargs='+', default=[], help='organised xyz TIFF(s), paired with --rgb by position')
  p.add_argument('--sample', nargs='+', default=[], help='Eyecandies: path prefix(es) of a sample\'s files, e.g. '
                                                         'data/07 for data/07_depth.png, data/07_image_4.png, …')
  p.add_argument('--scans', nargs='+', default=[], help='folder(s) of raw scans (rgb/ and/or xyz/, or an '
                                                        'Eyecandies data/ folder)')
  p.add_argument('--out', required=True, help='one scan: the anomaly map PNG; several: the output folder')
  p.add_argument('--size', choices=('224', 'original'), default='224', help='size of the written maps')
  p.add_argument('--overlay', default='', help='one scan: optional PNG of the map over the RGB')
  p.add_argument('--npy', default='', help='one scan: optional .npy of the raw float map')
  return p.parse_args(argv)


def trained_classes(workdir: Path, method: str) -> list[str]:
  """The classes whose evaluation stage of `method` finished in `workdir`."""
  return sorted(p.parent.parent.name for p in Workdir(workdir).root.glob(f'*/{method}/evaluate.done.json'))


def _entries(args: argparse.Namespace, det: detector.Detector) -> list:
  """The scans named on the command line, as the run's dataset kind's entries (files are read later)."""
  kind = det.kind
  entries = [e for folder in args.scans for e in kind.scan_folder(Path(folder))]
  if 'sample' in kind.scan_files:
    if args.rgb or args.xyz:
      raise UserError(f'a {kind.name} run scores raw samples: pass --sample PREFIX (or --scans DIR), not --rgb/--xyz')
    entries += [kind.scan_entry(sample=s) for s in args.sample]
  else:
    if args.sample:
      raise UserError(f'--sample is for Eyecandies runs; this {kind.name} run takes --rgb and/or --xyz')
    if args.rgb and args.xyz and len(args.rgb) != len(args.xyz):
      raise UserError(f'{len(args.rgb)} --rgb files but {len(args.xyz)} --xyz files; they pair by position')
    for i in range(max(len(args.rgb), len(args.xyz))):
      entries.append(kind.scan_entry(rgb=args.rgb[i] if args.rgb else None, xyz=args.xyz[i] if args.xyz else None))
  if not entries:
    raise UserError(f'nothing to score: pass {" / ".join("--" + f for f in kind.scan_files)} or --scans')
  return entries


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  distributed.enable_compilation_cache(home.compilation_cache_dir())
  try:
    return _predict(args)
  except UserError as e:  # io.DataError and the other user errors name the file or flag
    raise SystemExit(f'error: {e}') from e


def _predict(args: argparse.Namespace) -> dict:
  workdir = Path(args.workdir)
  config = detector.load_config(workdir, args.method or None)
  classes = trained_classes(workdir, config.method)
  if not classes:
    raise UserError(f'{workdir} holds no evaluated class of {config.method!r}; run experiments.run first')
  name = args.class_name or (classes[0] if len(classes) == 1 else '')
  if name not in classes:
    raise UserError(f'--class_name must be one of {classes}, got {args.class_name!r}')
  det = detector.Detector.load(workdir, name, config.method)
  entries = _entries(args, det)
  evaluation = Workdir(workdir).stage_dir(f'{config.method}/evaluate', name) / 'evaluation.npz'
  stored = [det.kind.load_entry(e, False) for e in entries]  # the preprocessing of `prepare`, read once
  results = det.score_stored(stored, [e.name for e in entries])
  row = det.main_row
  if len(entries) == 1 and not args.scans:
    return _write_one(args, det, entries[0], stored[0], results[0], row, evaluation, name)
  return _write_many(args, results, row, evaluation, name, config.method)


def _original_size(map224: np.ndarray, stored) -> np.ndarray:
  """The 224×224 map on the scan's own pixels: resized to the stored S×S, then the square padding undone."""
  side = (stored.xyz if stored.xyz is not None else stored.rgb).shape[0]
  full = np.asarray(Image.fromarray(map224).resize((side, side), Image.BILINEAR))
  return preprocessing.unpad_square(full, stored.raw_size or (side, side))


def _to_u8(anomaly_map: np.ndarray, low: float, high: float) -> np.ndarray:
  return np.clip((anomaly_map - low) / max(high - low, 1e-12) * 255, 0, 255).astype(np.uint8)


def _write_one(args, det, entry, stored, scores: detector.SampleScores, row: str, evaluation: Path,
               name: str) -> dict:
  if scores.status != 'ok':
    raise UserError(f'{entry.name}: cannot be scored: {scores.reason}')
  anomaly_map = scores.maps[row]
  if args.size == 'original':
    anomaly_map = _original_size(anomaly_map, stored)
  low, high = map_range(evaluation, row, anomaly_map)
  io.write_png(args.out, _to_u8(anomaly_map, low, high))
  if args.npy:
    with io.atomic_write(args.npy) as f:
      np.save(f, anomaly_map.astype(np.float32))
  if args.overlay:
    from experiments import report
    if stored.rgb is None:
      raise UserError('--overlay needs an RGB image')
    rgb = preprocessing.unpad_square(stored.rgb, stored.raw_size or stored.rgb.shape[:2])
    base = rgb if args.size == 'original' else np.asarray(Image.fromarray(stored.rgb).resize((224, 224),
                                                                                             Image.BICUBIC))
    io.write_png(args.overlay, report.overlay(base, anomaly_map, np.zeros(anomaly_map.shape, bool), (low, high)))
  result = {'class': name, 'method': det.method.name, 'row': row, 'image_scores': scores.image, 'map': args.out,
            'map_range': [low, high], 'problems': list(scores.problems)}
  print(json.dumps(result, indent=1))
  return result


def _write_many(args, results: list[detector.SampleScores], row: str, evaluation: Path, name: str,
                method: str) -> dict:
  out = Path(args.out)
  if out.suffix.lower() == '.png':
    raise UserError(f'--out {out}: several scans write a folder (scores.csv, scores.json, maps/), not one PNG')
  ok = [r for r in results if r.status == 'ok']
  low, high = map_range(evaluation, row, np.stack([r.maps[row] for r in ok]) if ok else np.zeros(1))
  rows_seen = list(dict.fromkeys(k for r in ok for k in r.image))
  records = []
  for r in results:
    record = {'scan': r.name, 'status': r.status, 'reason': r.reason, 'problems': list(r.problems),
              'scores': r.image, 'map': ''}
    if r.status == 'ok':
      path = out / 'maps' / f'{_safe(r.name)}.png'
      io.write_png(path, _to_u8(r.maps[row], low, high))
      record['map'] = str(path.relative_to(out))
    records.append(record)
  table = stdio.StringIO()
  writer = csv.writer(table)
  writer.writerow(['scan', 'status'] + rows_seen + ['map', 'reason', 'problems'])
  for rec in records:
    writer.writerow([rec['scan'], rec['status']] + [rec['scores'].get(k, '') for k in rows_seen] +
                    [rec['map'], rec['reason'], '; '.join(rec['problems'])])
  with io.atomic_write(out / 'scores.csv', 'w') as f:
    f.write(table.getvalue())
  summary = {'class': name, 'method': method, 'row': row, 'map_range': [low, high], 'scans': records}
  with io.atomic_write(out / 'scores.json', 'w') as f:
    json.dump(summary, f, indent=1)
  print(f'{len(ok)} of {len(results)} scans scored ({len(results) - len(ok)} unscorable); wrote {out}/scores.csv, '
        f'scores.json and maps/')
  return summary


def _safe(name: str) -> str:
  return re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_') or 'scan'


def map_range(evaluation: Path, row: str, anomaly_map: np.ndarray) -> tuple[float, float]:
  """The class's test-set min and max of `row` (SPEC §3.3's global normalisation), else these maps' own."""
  if evaluation.is_file():
    with np.load(evaluation) as z:
      if f'map_{row}' in z.files:
        maps = z[f'map_{row}']
        return float(maps.min()), float(maps.max())
  return float(anomaly_map.min()), float(anomaly_map.max())


if __name__ == '__main__':
  main()
