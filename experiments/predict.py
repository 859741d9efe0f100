"""Scores new scans with a trained work directory, from their raw files as they lie in the dataset layout.

  python -m experiments.predict --workdir runs/synthetic --class_name cube --rgb a.png --xyz a.tiff --out map.png
  python -m experiments.predict --workdir runs/synthetic --class_name cube --scans new/ --out results/
  python -m experiments.predict --workdir runs/eyecandies --class_name GummyBear --sample data/07 --out map.png

Each scan goes through the preprocessing `prepare` applied to the run's data (the dataset kind's `load_entry`: MVTec
3D-AD and the synthetic set: plane removal, square padding and largest-cluster cleaning, algorithms.md §1.2; Eyecandies:
depth + pose → cloud with the table removed, algorithms.md §1.3), then the algorithms.md §1.4 load transforms, so a scan
gets the numbers the evaluation gives it.

One scan: prints the image score of every row as JSON and writes the anomaly map of the method's main row (FUS for
G²SF) as an 8-bit PNG, 0 and 255 being the lowest and highest map values of the class's test set (so maps of
different scans compare). `--size original` maps it back onto the input's pixels (undoing the square padding);
`--overlay` also writes the map over the RGB; `--raw` the raw float map as a float32 TIFF.

Several scans (`--scans` folders holding `rgb/*.png` and/or `xyz/*.tiff` paired by name, an Eyecandies `data/`
folder, or several `--rgb` / `--xyz` / `--sample` values): one process, one compilation; `--out` is then a folder
that receives `scores.csv`, `scores.json` and `maps/<scan>.png`. A scan that cannot be scored honestly (too few
valid points, degenerate point features) is reported with status `unscorable` and its reason, never with a score.
Compiled programs are kept in JAX's persistent cache (`$G2SF_HOME/jax_cache`), so later calls start faster.

Outputs are checked before the model loads: none may be one of the scans' files, lie in a `--scans` folder or in a
work directory, and each must be writable; an existing output is replaced only if predict wrote it (its PNGs carry
a text mark, its TIFFs a marked description, its folders a marked `scores.json`); a results folder is replaced as
a whole, so no map of an earlier call is left behind. Symbolic links are refused as outputs.
"""
import argparse
import csv
import dataclasses
import io as stdio
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from g2sf_jax import data, detector, distributed, home, io
from g2sf_jax.data import preprocessing
from g2sf_jax.errors import OutputExistsError, UserError
from g2sf_jax.workdir import Workdir
from ports import efficientnet_lite0

# The tEXt chunk of every PNG predict writes, and the key of its scores.json: what it may replace on a later call.
MARK = {'Software': 'g2sf-jax predict'}
SCORES_MARK = 'g2sf_predict'
RAW_MARK = 'g2sf-jax predict: raw anomaly map'  # the description of the float TIFF --raw writes


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
  p.add_argument('--max_pixels', type=int, default=io.MAX_PIXELS,
                 help='refuse a scan whose files declare more pixels (checked before decoding)')
  p.add_argument('--overlay', default='', help='one scan: optional PNG of the map over the RGB')
  p.add_argument('--raw', default='', help='one scan: optional float32 TIFF of the raw map (unscaled scores)')
  return p.parse_args(argv)


def _entries(args: argparse.Namespace, kind) -> list:
  """The scans named on the command line, as the run's dataset kind's entries (files are read later)."""
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


def _input_files(entry) -> tuple[set[Path], list[tuple[Path, str]]]:
  """The raw files a scan's entry reads, resolved: every file it names (MVTec layout: rgb, xyz, gt), plus, for an
  Eyecandies entry (a folder and a sample id), the (folder, '<id>_') prefix that all its files share."""
  fields = [getattr(entry, f.name) for f in dataclasses.fields(entry)]
  files = {v.resolve() for v in fields if isinstance(v, Path) and v.is_file()}
  folder, sample = getattr(entry, 'folder', None), getattr(entry, 'sample_id', None)
  prefixes = [(Path(folder).resolve(), f'{sample}_')] if folder is not None and sample is not None else []
  return files, prefixes


def _check_outputs(args: argparse.Namespace, entries: list, many: bool) -> None:
  """Fails before any work if an output would overwrite a scan, land in a scan folder, or replace a file or folder
  predict did not write (module docstring)."""
  if many:
    given = [f for f, v in (('--overlay', args.overlay), ('--raw', args.raw)) if v]
    if args.size != '224':
      given.append('--size original')
    if given:
      raise UserError(f'{", ".join(given)}: only for one scan; several scans write 224×224 maps into --out')
    outputs = {'--out': Path(args.out)}
    if outputs['--out'].suffix.lower() == '.png':
      raise UserError(f'--out {args.out}: several scans write a folder (scores.csv, scores.json, maps/), not one PNG')
  else:
    outputs = {flag: Path(v) for flag, v in (('--out', args.out), ('--overlay', args.overlay), ('--raw', args.raw))
               if v}
    for flag, path in outputs.items():
      suffixes = ('.tif', '.tiff') if flag == '--raw' else ('.png',)
      if path.suffix.lower() not in suffixes or path.is_dir():
        raise UserError(f'{flag} {path}: one scan writes {"its raw map" if flag == "--raw" else "a PNG"} to a '
                        f'{suffixes[-1]} file path')
    if len({p.resolve() for p in outputs.values()}) < len(outputs):
      raise UserError(f'{", ".join(f"{f} {p}" for f, p in outputs.items())}: each output needs its own path')
  files, prefixes = set(), []
  for e in entries:
    f, pre = _input_files(e)
    files |= f
    prefixes += pre
  folders = [Path(f).resolve() for f in args.scans]
  inputs = list(files) + folders + [d for d, _ in prefixes]
  for flag, path in outputs.items():
    if path.is_symlink():
      raise UserError(f'{flag} {path}: a symbolic link; name the file or folder it points to')
    target = path.resolve()
    inside = Workdir.enclosing(target)
    if inside is not None:
      raise UserError(f'{flag} {path}: inside the work directory {inside}; predict never writes into a work '
                      'directory (its outputs are the runs\' own)')
    if (target in files or any(target == d or d in target.parents for d in folders)
        or any(target.parent == d and target.name.startswith(pre) for d, pre in prefixes)):
      raise UserError(f'{flag} {path}: inside the scans being scored; predict never writes into the input data')
    if any(target in i.parents for i in inputs):  # replacing the folder would delete the scans
      raise UserError(f'{flag} {path}: holds scans being scored; predict never writes over the input data')
    if path.exists() and not _ours(path, flag, many):
      raise OutputExistsError(f'{flag} {path}: exists and was not written by predict; move it away or choose '
                              'another path')
    _check_writable(flag, path)


def _check_writable(flag: str, path: Path) -> None:
  """Fails now, not after the model has loaded and scored, if the output's folder cannot take a new file."""
  folder = path.absolute().parent
  while not folder.exists():
    folder = folder.parent
  try:
    fd, probe = tempfile.mkstemp(dir=folder, prefix='.g2sf-probe.')
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise UserError(f'{flag} {path}: cannot write into {folder} ({e.strerror})') from None


def _ours(path: Path, flag: str, many: bool) -> bool:
  """Whether an existing output path holds what predict writes there, so that a later call may replace it."""
  if many:
    try:
      return SCORES_MARK in json.loads((path / 'scores.json').read_text())
    except (OSError, ValueError, TypeError):
      return False
  if flag == '--raw':
    return path.is_file() and io.tiff_description(path) == RAW_MARK
  return path.is_file() and io.png_text(path).get('Software') == MARK['Software']


def _check_names(names: list[str], entries: list) -> None:
  """Two scans with the same name would write the same map: fail, naming both."""
  seen = {}
  for name, entry in zip(names, entries):
    key = _safe(name)
    if key in seen:
      raise UserError(f'two scans are both named {name!r} ({_describe(seen[key])} and {_describe(entry)}), so their '
                      f'maps would both be maps/{key}.png: score them in separate calls or from folders with '
                      'different names')
    seen[key] = entry


def _describe(entry) -> str:
  files, prefixes = _input_files(entry)
  return ', '.join(sorted(map(str, files)) + [str(d / f'{pre}*') for d, pre in prefixes])


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  distributed.enable_compilation_cache(home.compilation_cache_dir())
  try:
    return _predict(args)
  except UserError as e:  # io.DataError and the other user errors name the file or flag
    raise SystemExit(f'error: {e}') from e


def _predict(args: argparse.Namespace) -> dict:
  workdir = Path(args.workdir)
  run = detector.Run(workdir, args.method or None)
  config = run.config
  name = run.check_class(args.class_name)
  entries = _entries(args, data.get(config.dataset))
  many = len(entries) > 1 or bool(args.scans)
  _check_outputs(args, entries, many)
  if many:
    _check_names([e.name for e in entries], entries)
  efficientnet_lite0.ensure_for(config)
  det = detector.Detector.load(workdir, name, config.method)
  stored = [det.kind.load_entry(e, False, args.max_pixels) for e in entries]  # `prepare`'s preprocessing
  results = det.score_stored(stored, [e.name for e in entries])
  row = det.main_row
  if not many:
    return _write_one(args, det, entries[0], stored[0], results[0], row, name)
  return _write_many(args, results, row, det.map_ranges.get(row), name, config.method)


def _original_size(map224: np.ndarray, stored) -> np.ndarray:
  """The 224×224 map on the scan's own pixels: resized to the stored S×S, then the square padding undone."""
  side = (stored.xyz if stored.xyz is not None else stored.rgb).shape[0]
  full = np.asarray(Image.fromarray(map224).resize((side, side), Image.BILINEAR))
  return preprocessing.unpad_square(full, stored.raw_size or (side, side))


def _to_u8(anomaly_map: np.ndarray, low: float, high: float) -> np.ndarray:
  return np.clip((anomaly_map - low) / max(high - low, 1e-12) * 255, 0, 255).astype(np.uint8)


def _write_one(args, det, entry, stored, scores: detector.SampleScores, row: str, name: str) -> dict:
  if scores.status != 'ok':
    raise UserError(f'{entry.name}: cannot be scored: {scores.reason}')
  anomaly_map = scores.maps[row]
  if args.size == 'original':
    anomaly_map = _original_size(anomaly_map, stored)
  low, high = det.map_ranges.get(row) or (float(anomaly_map.min()), float(anomaly_map.max()))
  io.write_png(args.out, _to_u8(anomaly_map, low, high), MARK)
  if args.raw:
    io.write_float_tiff(args.raw, anomaly_map.astype(np.float32), RAW_MARK)
  if args.overlay:
    from experiments import report
    if stored.raw_rgb is None:
      raise UserError('--overlay needs an RGB image')
    rgb = stored.raw_rgb  # the scan as read: the cleaned one is black wherever the point cloud was removed
    square = preprocessing.pad_square(rgb) if stored.raw_size else rgb  # as the stored sample the map covers
    base = rgb if args.size == 'original' else np.asarray(Image.fromarray(square).resize((224, 224), Image.BICUBIC))
    io.write_png(args.overlay, report.overlay(base, anomaly_map, np.zeros(anomaly_map.shape, bool), (low, high)),
                 MARK)
  result = {'class': name, 'method': det.method.name, 'row': row, 'image_scores': scores.image, 'map': args.out,
            'map_range': [low, high], 'problems': list(scores.problems)}
  print(json.dumps(result, indent=1))
  return result


def _write_many(args, results: list[detector.SampleScores], row: str, map_range: tuple[float, float] | None,
                name: str, method: str) -> dict:
  out = Path(args.out)
  ok = [r for r in results if r.status == 'ok']
  maps = np.stack([r.maps[row] for r in ok]) if ok else np.zeros(1)
  low, high = map_range or (float(maps.min()), float(maps.max()))
  rows_seen = list(dict.fromkeys(k for r in ok for k in r.image))
  records = []
  with io.atomic_dir(out, lambda path: _ours(path, '--out', True)) as tmp:
    for r in results:
      record = {'scan': r.name, 'status': r.status, 'reason': r.reason, 'problems': list(r.problems),
                'scores': r.image, 'map': ''}
      if r.status == 'ok':
        record['map'] = f'maps/{_safe(r.name)}.png'
        io.write_png(tmp / record['map'], _to_u8(r.maps[row], low, high), MARK)
      records.append(record)
    table = stdio.StringIO()
    writer = csv.writer(table)
    writer.writerow(['scan', 'status'] + rows_seen + ['map', 'reason', 'problems'])
    for rec in records:
      writer.writerow([rec['scan'], rec['status']] + [rec['scores'].get(k, '') for k in rows_seen] +
                      [rec['map'], rec['reason'], '; '.join(rec['problems'])])
    (tmp / 'scores.csv').write_text(table.getvalue())
    summary = {SCORES_MARK: 1, 'class': name, 'method': method, 'row': row, 'map_range': [low, high],
               'scans': records}
    (tmp / 'scores.json').write_text(json.dumps(summary, indent=1))
  print(f'{len(ok)} of {len(results)} scans scored ({len(results) - len(ok)} unscorable); wrote {out}/scores.csv, '
        f'scores.json and maps/')
  return summary


def _safe(name: str) -> str:
  return re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_') or 'scan'


if __name__ == '__main__':
  main()
