"""Pads variable-size point clouds to a few fixed sizes so jitted code compiles a handful of shapes.

Each cloud keeps its points first, in order, then zero padding with `valid == False`; the point ops never select
padded points (FPS, kNN) and their outputs at padded slots are ignored. Index 0 stays the first valid point, which
is where FPS starts (algorithms.md §2.2).
"""
from collections.abc import Sequence

import numpy as np

from g2sf_jax.data import transforms

# Up to 224×224 (every pixel valid), so any resized organised cloud fits; steps of 4,096 above 8,192, because FPS
# and the kNN run over the padding too (a typical 25k-point MVTec scan: 28,672 instead of 32,768).
DEFAULT_BUCKETS = (2048, 4096, 8192, 12288, 16384, 20480, 24576, 28672, 32768, 36864, 40960, 45056, 50176)


def bucket_size(n: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
  """The smallest bucket >= n."""
  fitting = [b for b in buckets if b >= n]
  if not fitting:
    raise ValueError(f'{n} points exceed the largest bucket {max(buckets)}; pass larger buckets')
  return min(fitting)


def pad_points(points: np.ndarray, buckets: Sequence[int] = DEFAULT_BUCKETS) -> tuple[np.ndarray, np.ndarray]:
  """Pads points [N, 3] to ([Nb, 3] float32, valid [Nb] bool) with Nb the bucket of N."""
  points_b, valid_b = pad_batch([points], buckets)
  return points_b[0], valid_b[0]


def pad_batch(clouds: Sequence[np.ndarray], buckets: Sequence[int] = DEFAULT_BUCKETS
              ) -> tuple[np.ndarray, np.ndarray]:
  """Pads clouds [N_i, 3] to one shared bucket: ([B, Nb, 3] float32, valid [B, Nb] bool)."""
  for i, cloud in enumerate(clouds):
    if cloud.ndim != 2 or cloud.shape[1] != 3:
      raise ValueError(f'cloud {i}: expected points [N, 3], got shape {cloud.shape}')
  size = bucket_size(max((len(c) for c in clouds), default=0), buckets)
  points = np.zeros((len(clouds), size, 3), np.float32)
  valid = np.zeros((len(clouds), size), bool)
  for i, cloud in enumerate(clouds):
    points[i, :len(cloud)] = cloud
    valid[i, :len(cloud)] = True
  return points, valid


def pack_organised(xyz: np.ndarray, buckets: Sequence[int] = DEFAULT_BUCKETS
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Organised clouds `[B, H, W, 3]` → the valid pixels' points in raster order, padded to one bucket: (points
  [B, Nb, 3] float32, valid [B, Nb] bool, source [B, H·W] int32: each pixel's point, Nb for a pixel without one)."""
  xyz = np.asarray(xyz, np.float32)
  if xyz.ndim != 4 or xyz.shape[-1] != 3:
    raise ValueError(f'expected xyz [B, H, W, 3], got shape {xyz.shape}')
  b, h, w, _ = xyz.shape
  flat = xyz.reshape(b, h * w, 3)
  valid_pixels = transforms.valid_mask(flat)  # algorithms.md §1.4
  points, valid = pad_batch([flat[i][valid_pixels[i]] for i in range(b)], buckets)
  source = np.full((b, h * w), points.shape[1], np.int32)
  for i in range(b):
    source[i, valid_pixels[i]] = np.arange(valid_pixels[i].sum(), dtype=np.int32)
  return points, valid, source
