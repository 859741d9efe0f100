"""CFM's per-pixel features at 224×224 (official `models/features.py`), built from what the shared stages give.

RGB: the backbone's patch grid (28×28 for DINO) bilinearly upsampled to 224×224 (`align_corners=False`). Points: the
backbone's per-pixel features (PointMAE: group features IDW-interpolated to the valid points, algorithms.md §2.4), then
AvgPool2d(3, stride 1) and the adaptive pooling back to 224×224 (the algorithms.md §2.4 pooling with a 224 grid). The
background is `sum over channels == 0` of the pooled point features (a dilation of the valid points). All three as rows
`[B, 50176, C]`.

CFM keeps no feature bank: the point features are recomputed from the clouds (224² × 1152 floats is 231 MB per
sample for PointMAE), unless a training set is small enough to hold in memory (`cfm.cache_gb`).
"""
import numpy as np

from g2sf_jax.ops import pooling, resize

SIZE = 224


def rgb_rows(img: np.ndarray) -> np.ndarray:
  """img [B, h, w, Cr] → [B, 50176, Cr]."""
  x = resize.bilinear(img, SIZE)
  return np.asarray(x).reshape(img.shape[0], SIZE * SIZE, -1)


def point_rows(point_backbone, xyz: np.ndarray) -> np.ndarray:
  """xyz model inputs [B, 224, 224, 3] → pooled per-pixel point features [B, 50176, Cp]."""
  pixel = point_backbone(np.asarray(xyz, np.float32))
  return np.asarray(pooling.pool_to_grid(pixel, grid=SIZE)).reshape(xyz.shape[0], SIZE * SIZE, -1)


def background(pcd_rows: np.ndarray) -> np.ndarray:
  """[B, P, Cp] → bool [B, P]: `xyz_patch.sum(-1) == 0`."""
  return np.sum(pcd_rows, axis=-1) == 0
