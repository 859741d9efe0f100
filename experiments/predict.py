"""Scores a new scan with a trained work directory.

  python -m experiments.predict --workdir runs/synthetic --class_name cube --rgb a.png --xyz a.tiff --out map.png

Prints the image score of every row as JSON and writes the anomaly map of the run's main row (FUS for G²SF) as an
8-bit PNG: 0 and 255 are the lowest and highest map values of that class's test set (from the evaluation stage),
so maps of different scans compare. `--size original` resizes the 224×224 map back to the input's size;
`--overlay` also writes the map over the RGB; `--npy` writes the raw float map.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from g2sf_jax import detector, io
from g2sf_jax.workdir import Workdir


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog='python -m experiments.predict', description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True, help='work directory of a finished experiments.run')
  p.add_argument('--class_name', default='', help='class to score with (optional when the run has one class)')
  p.add_argument('--method', default='', help='method whose run to use (optional when the work directory has one)')
  p.add_argument('--rgb', default='', help='RGB image (PNG/JPEG), required unless the run is 3D-only')
  p.add_argument('--xyz', default='', help='organised point cloud, float32 H×W×3 TIFF, required unless RGB-only')
  p.add_argument('--out', required=True, help='anomaly map PNG to write')
  p.add_argument('--size', choices=('224', 'original'), default='224', help='size of the written maps')
  p.add_argument('--overlay', default='', help='optional PNG of the map over the RGB')
  p.add_argument('--npy', default='', help='optional .npy of the raw float map')
  return p.parse_args(argv)


def trained_classes(workdir: Path, method: str) -> list[str]:
  """The classes whose evaluation stage of `method` finished in `workdir`."""
  return sorted(p.parent.parent.name for p in Workdir(workdir).root.glob(f'*/{method}/evaluate.done.json'))


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  workdir = Path(args.workdir)
  try:
    config = detector.load_config(workdir, args.method or None)
  except FileNotFoundError as e:
    raise SystemExit(f'error: {e}') from e
  classes = trained_classes(workdir, config.method)
  if not classes:
    raise SystemExit(f'error: {workdir} holds no evaluated class of {config.method!r}; run experiments.run first')
  name = args.class_name or (classes[0] if len(classes) == 1 else '')
  if name not in classes:
    raise SystemExit(f'error: --class_name must be one of {classes}, got {args.class_name!r}')
  try:
    rgb = io.read_rgb_png(args.rgb) if args.rgb else None
    xyz = io.read_xyz_tiff(args.xyz) if args.xyz else None
    det = detector.Detector.load(workdir, name, config.method)
  except (ValueError, FileNotFoundError) as e:  # io.DataError is a ValueError and names the file
    raise SystemExit(f'error: {e}') from e
  try:
    scores = det.score(rgb, xyz)
  except ValueError as e:
    raise SystemExit(f'error: --rgb {args.rgb!r} --xyz {args.xyz!r}: {e}') from e
  row = det.main_row
  anomaly_map = scores.maps[row]
  if args.size == 'original':
    h, w = (rgb if rgb is not None else xyz).shape[:2]
    anomaly_map = np.asarray(Image.fromarray(anomaly_map).resize((w, h), Image.BILINEAR))
  evaluation = Workdir(workdir).stage_dir(f'{config.method}/evaluate', name) / 'evaluation.npz'
  low, high = map_range(evaluation, row, anomaly_map)
  u8 = np.clip((anomaly_map - low) / max(high - low, 1e-12) * 255, 0, 255).astype(np.uint8)
  io.write_png(args.out, u8)
  if args.npy:
    with io.atomic_write(args.npy) as f:
      np.save(f, anomaly_map.astype(np.float32))
  if args.overlay:
    from experiments import report
    if rgb is None:
      raise SystemExit('error: --overlay needs --rgb')
    base = rgb if args.size == 'original' else np.asarray(Image.fromarray(rgb).resize((224, 224), Image.BICUBIC))
    io.write_png(args.overlay, report.overlay(base, anomaly_map, np.zeros(anomaly_map.shape, bool), (low, high)))
  result = {'class': name, 'method': config.method, 'row': row, 'image_scores': scores.image, 'map': args.out, 'map_range': [low, high]}
  print(json.dumps(result, indent=1))
  return result


def map_range(evaluation: Path, row: str, anomaly_map: np.ndarray) -> tuple[float, float]:
  """The class's test-set min and max of `row` (SPEC §3.3's global normalisation), else this map's own."""
  if evaluation.is_file():
    with np.load(evaluation) as z:
      if f'map_{row}' in z.files:
        maps = z[f'map_{row}']
        return float(maps.min()), float(maps.max())
  return float(anomaly_map.min()), float(anomaly_map.max())


if __name__ == '__main__':
  main()
