"""Scores new scans with a trained work directory, from their raw files as they lie: a pass/fail decision per scan,
the defect mask and regions at the scan's own resolution, and the anomaly scores in 2-D and on the 3-D cloud.

  python -m experiments.predict --workdir runs/synthetic --class_name cube --rgb a.png --xyz a.tiff --out map.png \
      --mask mask.png --ply cloud.ply
  python -m experiments.predict --workdir runs/synthetic --class_name cube --scans new/ --out results/ [--ply]
  python -m experiments.predict --workdir runs/eyecandies --class_name GummyBear --sample data/07 --out map.png

Each scan goes through the preprocessing `prepare` applied to the run's data (MVTec 3D-AD layout: plane removal,
square padding and largest-cluster cleaning, algorithms.md §1.2, unless the run set `clean_scans=false`;
Eyecandies: depth + pose → cloud, §1.3) and the §1.4 load transforms, then through `g2sf_jax.scoring`, the path the
evaluation takes, so a scan gets the numbers and the decision the evaluation gives it.

Decisions come from the run's calibration (`g2sf_jax.calibration`): `score` is the normalised score of the method's
main row (FUS for G²SF), 0.5 at the calibrated threshold and monotone in the raw score; `label` is `defect` from
`--threshold` (default 0.5) up, else `good`, or `unscorable` (with the reason: too few valid points, degenerate point
features; never a score). Maps are written on that fixed scale: pixel value 255 × the normalised pixel score, so
128 is the threshold and maps compare across scans, runs and classes. `--size 224` writes them on the model's grid.

One scan: prints the decision and every row's raw score as JSON; `--out` the map PNG, `--mask` the binary defect
mask (255 = defect), `--overlay` the map over the RGB with the mask outlined, `--raw` the map's raw scores as a
float32 TIFF, `--ply` the cleaned point cloud with each point's normalised score and a colour map. Several scans
(`--scans` folders holding `rgb/*.png` and/or `xyz/*.tiff` paired by name, an Eyecandies `data/` folder, or several
`--rgb` / `--xyz` / `--sample` values): one process, one compilation; `--out` is then a folder that receives
`scores.csv`, `scores.json` (the same fields per scan), `maps/`, `masks/` and with `--ply` `clouds/`.

Outputs are checked before the model loads: none may be one of the scans' files, lie in a `--scans` folder or in a
work directory, and each must be writable; an existing output is replaced only if predict wrote it (its PNGs carry
a text mark, its TIFFs a marked description, its PLYs a marked header, its folders a marked `scores.json`); a
results folder is replaced as a whole. Symbolic links are refused as outputs. Compiled programs are kept in JAX's
persistent cache (`$G2SF_HOME/jax_cache`), so later calls start faster.
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

from g2sf_jax import data, detector, distributed, home, io, ply, scoring
from g2sf_jax.data import preprocessing
from g2sf_jax import decisions
from g2sf_jax.decisions import scan_cloud, to_scan
from g2sf_jax.errors import OutputExistsError, UserError
from g2sf_jax.workdir import Workdir
from ports import efficientnet_lite0

# The tEXt chunk of every PNG predict writes, and the key of its scores.json: what it may replace on a later call.
MARK = {'Software': 'g2sf-jax predict'}
SCORES_MARK = 'g2sf_predict'
RAW_MARK = 'g2sf-jax predict: raw anomaly map'  # the description of the float TIFF --raw writes
_SUFFIXES = {'--out': ('.png',), '--mask': ('.png',), '--overlay': ('.png',), '--raw': ('.tif', '.tiff'),
             '--ply': ('.ply',)}


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
  p.add_argument('--size', choices=('original', '224'), default='original',
                 help='maps and masks at the scan\'s resolution (default) or on the 224×224 model grid')
  p.add_argument('--threshold', type=float, default=0.5,
                 help='normalised score from which a scan or pixel is a defect (0.5: the calibrated threshold)')
  p.add_argument('--mask', default='', help='one scan: PNG of the binary defect mask')
  p.add_argument('--overlay', default='', help='one scan: PNG of the map over the RGB, the mask outlined')
  p.add_argument('--raw', default='', help='one scan: float32 TIFF of the raw map (unscaled scores)')
  p.add_argument('--ply', nargs='?', const='clouds', default='',
                 help='one scan: PLY of the cloud with its scores; several scans: the flag alone writes clouds/')
  p.add_argument('--max_pixels', type=int, default=io.MAX_PIXELS,
                 help='refuse a scan whose files declare more pixels (checked before decoding)')
  args = p.parse_args(argv)
  if not 0 < args.threshold < 1:
    p.error(f'--threshold {args.threshold}: expected a normalised score in (0, 1), 0.5 being the calibrated one')
  return args


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


def _outputs(args: argparse.Namespace, many: bool) -> dict[str, Path]:
  """The output paths of this call by flag, checked for their kind."""
  if many:
    given = [f for f in ('--mask', '--overlay', '--raw') if getattr(args, f[2:])]
    if given:
      raise UserError(f'{", ".join(given)}: only for one scan; several scans write maps/ and masks/ into --out')
    if Path(args.out).suffix.lower() == '.png':
      raise UserError(f'--out {args.out}: several scans write a folder (scores.csv, scores.json, maps/), not one PNG')
    return {'--out': Path(args.out)}
  if args.ply == 'clouds':
    raise UserError('--ply: one scan writes its cloud to a .ply file path (the flag alone is for --scans)')
  outputs = {flag: Path(getattr(args, flag[2:])) for flag in _SUFFIXES if getattr(args, flag[2:])}
  for flag, path in outputs.items():
    if path.suffix.lower() not in _SUFFIXES[flag] or path.is_dir():
      what = {'--raw': 'its raw map', '--ply': 'its cloud'}.get(flag, 'a PNG')
      raise UserError(f'{flag} {path}: one scan writes {what} to a {_SUFFIXES[flag][-1]} file path')
  if len({p.resolve() for p in outputs.values()}) < len(outputs):
    raise UserError(f'{", ".join(f"{f} {p}" for f, p in outputs.items())}: each output needs its own path')
  return outputs


def _check_outputs(args: argparse.Namespace, entries: list, many: bool) -> None:
  """Fails before any work if an output would overwrite a scan, land in a scan folder or a work directory, replace a
  file or folder predict did not write, or cannot be written (module docstring)."""
  outputs = _outputs(args, many)
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
  if flag == '--ply':
    return path.is_file() and ply.is_ours(path)
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
  stored = [det.kind.load_entry(e, False, args.max_pixels, det.clean) for e in entries]  # `prepare`'s preprocessing
  results = scoring.score_stored(det, stored, [e.name for e in entries], threshold=args.threshold)
  if not many:
    return _write_one(args, det, stored[0], results[0])
  return _write_many(args, det, stored, results)


def _on_grid(args, anomaly_map: np.ndarray, stored) -> np.ndarray:
  """A map (or mask) as written: at the scan's resolution, or back on the 224×224 grid with `--size 224`."""
  if args.size == 'original':
    return anomaly_map
  side = (stored.xyz if stored.xyz is not None else stored.rgb).shape[0]
  square = preprocessing.pad_square(anomaly_map) if stored.raw_size and stored.raw_size != (side, side) \
      else anomaly_map
  return np.asarray(Image.fromarray(np.asarray(square, np.float32)).resize((224, 224), Image.BILINEAR))


def _cloud(path: Path, result: scoring.ScanResult, stored, det) -> int:
  """Writes the cleaned cloud's valid points with their normalised scores; returns their number."""
  from g2sf_jax.data import transforms
  xyz = scan_cloud(stored)
  if xyz is None:
    raise UserError('--ply needs a point cloud (the run has no xyz)')
  valid = transforms.valid_mask(xyz)
  ply.write(path, xyz[valid], result.decision.map[valid],
            f'class {det.class_name}, method {det.method.name}, row {det.main_row}, scan {result.name}')
  return int(valid.sum())


def _write_one(args, det, stored, result: scoring.ScanResult) -> dict:
  if result.status != 'ok':
    raise UserError(f'{result.name}: cannot be scored: {result.reason}')
  decision = result.decision
  normalised = _on_grid(args, decision.map, stored)
  io.write_png(args.out, decisions.map_u8(normalised), MARK)
  mask = _on_grid(args, decision.mask.astype(np.float32), stored) >= 0.5
  if args.mask:
    io.write_png(args.mask, mask.astype(np.uint8) * 255, MARK)
  if args.raw:
    io.write_float_tiff(args.raw, _on_grid(args, to_scan(result.maps[det.main_row], stored), stored), RAW_MARK)
  if args.overlay:
    from experiments import report
    if stored.raw_rgb is None:
      raise UserError('--overlay needs an RGB image')
    rgb = stored.raw_rgb  # the scan as read: the cleaned one is black wherever the point cloud was removed
    if args.size == '224':
      square = preprocessing.pad_square(rgb) if stored.raw_size else rgb  # as the stored sample the map covers
      rgb = np.asarray(Image.fromarray(square).resize((224, 224), Image.BICUBIC))
    io.write_png(args.overlay, report.overlay(rgb, normalised, np.zeros(normalised.shape, bool), (0.0, 1.0),
                                              predicted=mask), MARK)
  out = dict(scoring.record(result, det.main_row), **{'class': det.class_name, 'method': det.method.name,
                                                      'map': args.out})
  if args.mask:
    out['mask'] = args.mask
  if args.ply:
    _cloud(Path(args.ply), result, stored, det)
    out['ply'] = args.ply
  print(json.dumps(out, indent=1))
  return out


def _write_many(args, det, stored, results: list[scoring.ScanResult]) -> dict:
  out = Path(args.out)
  records = []
  with io.atomic_dir(out, lambda path: _ours(path, '--out', True)) as tmp:
    for st, r in zip(stored, results):
      record = dict(scoring.record(r, det.main_row), map='', mask='', ply='')
      if r.status == 'ok':
        record['map'], record['mask'] = f'maps/{_safe(r.name)}.png', f'masks/{_safe(r.name)}.png'
        io.write_png(tmp / record['map'], decisions.map_u8(_on_grid(args, r.decision.map, st)), MARK)
        mask = _on_grid(args, r.decision.mask.astype(np.float32), st) >= 0.5
        io.write_png(tmp / record['mask'], mask.astype(np.uint8) * 255, MARK)
        if args.ply and st.xyz is not None:
          record['ply'] = f'clouds/{_safe(r.name)}.ply'
          _cloud(tmp / record['ply'], r, st, det)
      records.append(record)
    rows = list(dict.fromkeys(k for r in records for k in r['image_scores']))
    table = stdio.StringIO()
    writer = csv.writer(table)
    writer.writerow(['scan', 'status', 'label', 'score', 'raw_score', 'threshold', 'defect_pixels', 'regions']
                    + [f'raw_{row}' for row in rows] + ['map', 'mask', 'ply', 'reason', 'problems'])
    for rec in records:
      writer.writerow([rec['scan'], rec['status'], rec['label'], rec.get('score', ''), rec.get('raw_score', ''),
                       rec.get('threshold', ''), rec.get('defect_pixels', ''), len(rec.get('regions', []))]
                      + [rec['image_scores'].get(row, '') for row in rows]
                      + [rec['map'], rec['mask'], rec['ply'], rec['reason'], '; '.join(rec['problems'])])
    (tmp / 'scores.csv').write_text(table.getvalue())
    summary = {SCORES_MARK: 1, 'class': det.class_name, 'method': det.method.name, 'row': det.main_row,
               'threshold': args.threshold, 'scans': records}
    (tmp / 'scores.json').write_text(json.dumps(summary, indent=1))
  counts = {label: sum(r['label'] == label for r in records) for label in ('good', 'defect', 'unscorable')}
  print(f'{len(records)} scans: {counts["good"]} good, {counts["defect"]} defect, {counts["unscorable"]} unscorable; '
        f'wrote {out}/scores.csv, scores.json, maps/ and masks/{" and clouds/" if args.ply else ""}')
  return summary


def _safe(name: str) -> str:
  return re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_') or 'scan'


if __name__ == '__main__':
  main()
