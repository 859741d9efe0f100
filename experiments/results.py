"""A class's evaluated results for the report: metrics per row and the test images with their maps."""
from pathlib import Path

import ml_collections
import numpy as np
from PIL import Image

from experiments import report
from g2sf_jax.data import prepared, transforms
from g2sf_jax.methods import base


def class_result(config: ml_collections.ConfigDict, method: base.Method, evaluate_dir: Path, data_dir: Path,
                 name: str) -> report.ClassResult:
  """Metrics of every row of `method` and the overlays' inputs, from `evaluate_dir/evaluation.npz`."""
  c = config
  evaluation = evaluate_dir / 'evaluation.npz'
  with np.load(evaluation) as z:
    arrays = {k: z[k] for k in z.files}
  rows = {row: report.RowResult.compute(arrays['labels'], arrays[f'score_{row}'], arrays['masks'],
                                        arrays[f'map_{row}'], c.metrics.aupro_limits, c.metrics.aupro_thresholds,
                                        pro_maps=arrays.get(f'pro_map_{row}'))
          for row in method.rows(c)}
  map_row = method.main_row(c)
  full = prepared.load_split_full(c.dataset, data_dir, name, 'test')
  images, problems = [], []
  for i in range(len(arrays['labels'])):
    sample = full[i]
    images.append(report.ImageRecord(str(arrays['names'][i]), _picture224(sample), arrays[f'map_{map_row}'][i],
                                     arrays['masks'][i], int(arrays['labels'][i]),
                                     float(arrays[f'score_{map_row}'][i])))
    problems += [(sample['name'], p) for p in sample['problems']]
  return report.ClassResult(name, rows, images, map_row=map_row, problems=problems)


def _picture224(sample: dict) -> np.ndarray:
  """uint8 [224, 224, 3] to draw the overlays on: the RGB (PIL bicubic, algorithms.md §1.4), or for 3D-only data the
  depth (z of the valid points, nearer = brighter)."""
  if 'rgb' in sample:
    return np.asarray(Image.fromarray(sample['rgb']).resize((224, 224), Image.BICUBIC))
  xyz = transforms.resize_xyz(sample['xyz'])
  valid = transforms.valid_mask(xyz)
  grey = np.zeros(valid.shape, np.uint8)
  if valid.any():
    z = xyz[..., 2][valid]
    grey[valid] = np.round(255 * (z.max() - z) / max(float(z.max() - z.min()), 1e-12)).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1)
