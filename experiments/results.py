"""A class's evaluated results for the report: the metrics its labels allow per row, the decisions at the
calibrated threshold, and the test scans with their maps at their own resolution."""
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np

from experiments import report
from g2sf_jax import decisions
from g2sf_jax.calibration import ADVISED_GOOD, FILE as CALIBRATION_FILE, Calibration
from g2sf_jax.data import prepared, preprocessing, transforms
from g2sf_jax.methods import base


def class_result(config: ml_collections.ConfigDict, method: base.Method, evaluate_dir: Path, calibrate_dir: Path,
                 data_dir: Path, name: str) -> report.ClassResult:
  """Every row's metrics and the overlays' inputs, from `evaluate_dir/evaluation.npz`."""
  c = config
  with np.load(evaluate_dir / 'evaluation.npz', allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  calibration = Calibration.load(calibrate_dir / CALIBRATION_FILE)
  scored = arrays['scored']
  labels = arrays['labels'][scored]
  notes = _notes(arrays, calibration)
  thresholds = c.metrics.aupro_thresholds if c.metrics.aupro_thresholds else method.aupro_thresholds
  rows = {}
  for row in method.rows(c):
    pro = arrays.get(f'pro_map_{row}')
    rows[row] = report.RowResult.compute(
        labels, arrays[f'score_{row}'][scored], arrays['masks'][scored], arrays[f'map_{row}'][scored],
        c.metrics.aupro_limits, thresholds, pro_maps=None if pro is None else pro[scored],
        has_mask=arrays['has_mask'][scored], decisions=arrays[f'decision_{row}'][scored],
        threshold=calibration.rows[row].image.value)
  map_row = method.main_row(c)
  full = prepared.load_split_full(c.dataset, data_dir, name, 'test') if len(scored) else []
  problems = [(s['name'], p) for s in full for p in s['problems']]
  images = _Images(full, arrays, scored, map_row, calibration)
  return report.ClassResult(name, rows, images, map_row=map_row, map_range=(0.0, 1.0), problems=problems,
                            notes=notes)


def _notes(arrays: dict, calibration: Calibration) -> list[str]:
  """What the labels allow, said once per class."""
  n, scored, labels = len(arrays['labels']), arrays['scored'], arrays['labels']
  calibrated = next(iter(calibration.rows.values()))
  notes = [f'thresholds from {calibrated.good} good and {calibrated.defect} defective '
           f'{"held-out training" if calibration.source == "holdout" else "validation"} scans '
           f'(rule {calibrated.rule})']
  if calibrated.good < ADVISED_GOOD:
    scans = 'scan' if calibrated.good == 1 else 'scans'
    notes.append(f'only {calibrated.good} good {scans} to calibrate on: the thresholds are rough (at least '
                 f'{ADVISED_GOOD} are advised; add validation scans or raise calibration.holdout)')
  if n == 0:
    return notes + ['no test scans: no metrics']
  if (~scored).any():
    notes.append(f'{int((~scored).sum())} of {n} test scans cannot be scored and are left out')
  if not (labels[scored] != 0).any():
    notes.append('good test scans only: the false-reject rate at the threshold, no AUROC or AUPRO')
  elif (labels[scored] == 0).all() or (labels[scored] != 0).all():
    notes.append('defective test scans only: no image AUROC')
  without = int(((labels != 0) & ~arrays['has_mask'] & scored).sum())
  if without:
    notes.append(f'{without} defective test scans have no mask: they count for the image metrics only'
                 + ('' if (arrays['has_mask'] & (labels != 0) & scored).any() else ' (no pixel metrics)'))
  return notes


class _Images(Sequence):
  """The test scans as report images, made one at a time (a full-size class would not fit in memory at once):
  the scan at its own resolution, the main row's normalised map and predicted mask, the ground truth, the cloud."""

  def __init__(self, full, arrays: dict, scored: np.ndarray, row: str, calibration: Calibration):
    self.full, self.arrays, self.row, self.calibration = full, arrays, row, calibration
    self.index = [i for i, ok in enumerate(scored) if ok]

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, k: int) -> report.ImageRecord:
    i = self.index[k]
    sample = self.full[i]
    stored = prepared.stored(sample)
    cal = self.calibration.rows[self.row]
    normalised = cal.pixel.normalise(decisions.to_scan(self.arrays[f'map_{self.row}'][i], stored))
    mask = preprocessing.unpad_square(sample['mask'], stored.raw_size) != 0
    decided = 'defect' if self.arrays[f'decision_{self.row}'][i] else 'good'
    return report.ImageRecord(str(self.arrays['names'][i]), _picture(sample, stored.raw_size), normalised, mask,
                              int(self.arrays['labels'][i]),
                              float(cal.image.normalise(self.arrays[f'score_{self.row}'][i])),
                              predicted=normalised >= 0.5, decision=decided, cloud=decisions.scan_cloud(stored))


def _picture(sample: dict, raw_size: tuple[int, int]) -> np.ndarray:
  """uint8 [H, W, 3] to draw the overlays on, at the scan's resolution: the stored RGB (the cleaned image, black where
  preprocessing removed the background), or for 3-D-only data the depth (z of the valid points, nearer = brighter)."""
  if 'rgb' in sample:
    return preprocessing.unpad_square(sample['rgb'], raw_size)
  xyz = preprocessing.unpad_square(sample['xyz'], raw_size)
  valid = transforms.valid_mask(xyz)
  grey = np.zeros(valid.shape, np.uint8)
  if valid.any():
    z = xyz[..., 2][valid]
    grey[valid] = np.round(255 * (z.max() - z) / max(float(z.max() - z.min()), 1e-12)).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1)
