"""The per-sample load transforms of algorithms.md §1.4: stored arrays → model input, shared by every path into a model.

`model_input` is the one function that turns a stored sample (what `prepare` wrote, or what a dataset kind's
`load_entry` returns for a new scan) into the 224×224 arrays the backbones see; the evaluation, anomaly synthesis
and `predict` all go through it, so a scan scored from its raw files gets the numbers the evaluation gives it.
"""
from typing import Any, Mapping

import numpy as np
from PIL import Image

SIZE = 224
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def valid_mask(xyz: Any) -> Any:
  """bool [...] of xyz [..., 3]: a point is valid iff all three coordinates are non-zero (algorithms.md §1.4) and
  finite.

  The one definition of a valid point; NumPy or JAX input. Prepared data has no NaNs (preparation replaces them by
  missing points), so finiteness only matters for arrays that come from elsewhere.
  """
  return (xyz != 0).all(axis=-1) & (abs(xyz) < np.inf).all(axis=-1)


def resize_rgb(rgb: np.ndarray, size: int = SIZE) -> np.ndarray:
  """uint8 [H, W, 3] -> float32 [size, size, 3]: PIL bicubic (antialiased), /255, ImageNet normalisation."""
  image = Image.fromarray(np.asarray(rgb, np.uint8)).convert('RGB').resize((size, size), Image.BICUBIC)
  return (np.asarray(image, np.float32) / np.float32(255) - IMAGENET_MEAN) / IMAGENET_STD


def nearest_indices_torch(in_size: int, out_size: int) -> np.ndarray:
  """PyTorch's legacy `interpolate(mode='nearest')` source index: floor(dst * in/out) in float32."""
  if in_size == out_size:
    return np.arange(out_size)
  scale = np.float32(in_size) / np.float32(out_size)
  return np.minimum(np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64), in_size - 1)


def resize_xyz(xyz: np.ndarray, size: int = SIZE) -> np.ndarray:
  """[H, W, 3] -> float32 [size, size, 3] with the torch-legacy nearest rule (differs from PIL's, algorithms.md §1.4).
  """
  xyz = np.asarray(xyz, np.float32)
  rows = nearest_indices_torch(xyz.shape[0], size)
  cols = nearest_indices_torch(xyz.shape[1], size)
  return xyz[rows[:, None], cols[None, :]]


def resize_mask(mask: np.ndarray, size: int = SIZE) -> np.ndarray:
  """uint8 [H, W] -> bool [size, size]: PIL nearest (pixel centres), /255, > 0.5 (algorithms.md §1.4).

  PIL itself, not the formula floor((dst + 0.5) * in/out): PIL's fixed-point sampling is one pixel lower where that
  product is an exact integer (e.g. 25 of 224 columns for Eyecandies' 512 -> 224).
  """
  image = Image.fromarray(np.asarray(mask, np.uint8)).convert('L').resize((size, size), Image.NEAREST)
  return np.asarray(image, np.float32) / np.float32(255) > 0.5


def model_input(stored: Mapping[str, Any], mask_rgb_by_xyz: bool) -> dict[str, np.ndarray]:
  """A stored sample's model inputs: `rgb` [224,224,3] ImageNet-normalised, `xyz` [224,224,3], `mask` bool [224,224].

  `stored` holds `rgb` uint8 [S,S,3] and/or `xyz` float32 [S,S,3] (a key per modality present) and optionally `mask`
  uint8 [S,S]. `mask_rgb_by_xyz` (Eyecandies, algorithms.md §1.4) zeroes the RGB at invalid points before resizing.
  """
  out = {}
  if 'rgb' in stored:
    rgb = stored['rgb']
    if mask_rgb_by_xyz and 'xyz' in stored:
      rgb = np.where(valid_mask(stored['xyz'])[..., None], rgb, 0).astype(np.uint8)
    out['rgb'] = resize_rgb(rgb)
  if 'xyz' in stored:
    out['xyz'] = resize_xyz(stored['xyz'])
  if stored.get('mask') is not None:
    out['mask'] = resize_mask(stored['mask'])
  return out
