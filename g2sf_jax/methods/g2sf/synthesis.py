"""Synthetic anomalies for training the fusion (algorithms.md §4.2): Perlin-shaped cut-and-paste of a donor's augmented
RGB and an anomaly-source cloud's points into an augmented normal training sample.

Everything runs at the stored (full) resolution on `data.load_split_full` samples; the caller resizes the result as in
algorithms.md §1.4. All randomness comes from one `numpy.random.Generator`, so a sample is reproducible from its seed;
the streams cannot match the reference's torch/imgaug ones (algorithms.md §9.2).

Photometric donor augmentations (the reference's imgaug list, 3 distinct per donor; imgaug is unmaintained):
  AverageBlur(k=50)                    → cv2.blur 50×50 (what imgaug calls; albumentations' Blur forces odd kernels)
  GammaContrast(0.5–2, per channel)    → per-channel LUT 255·(x/255)^γ (albumentations' RandomGamma has one γ)
  MultiplyAndAddToBrightness           → Y of YCrCb: Y·U(0.75,1.7) + U(−50,50), clipped
  AddToHueAndSaturation(±50, per ch.)  → albumentations HueSaturationValue, hue ±50·180/255 (OpenCV hue units)
  pillike.Autocontrast (cutoff 0–20%)  → albumentations AutoContrast(method='pil')
  ElasticTransformation(α 2.5–7.5, σ 5)→ albumentations ElasticTransform(uniform noise, cubic, fill 0)
  Invert(p 0.05, per channel)          → each channel inverted with probability 0.05
  Cartoon(3, 1.0, 2.0, 0.01)           → approximation: median blur 3, mean-shift segmentation, saturation ×2,
                                         the 1 % strongest Canny-gradient pixels darkened (no exact equivalent)
"""
from typing import Any, Callable, Mapping, Sequence

import albumentations as A
import cv2
import numpy as np
from scipy import ndimage

from g2sf_jax.data import transforms
from g2sf_jax.methods.g2sf.perlin import perlin_2d

MILD_AUGMENTATION_CLASSES = ('dowel', 'tire', 'foam', 'rope', 'cable_gland')  # algorithms.md §4.2.2
MIN_COMPONENT, MAX_COMPONENT, MIN_TOTAL = 100, 1600, 300  # pixels at the Perlin resolution (algorithms.md §4.2.5)
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


class SynthesisError(RuntimeError):
  """No acceptable anomaly mask could be drawn for this (normal, donor, source) triple."""


def select_anomaly_sources(train_xyz: Mapping[str, Sequence[str]], count: int, seed: int = 0,
                           usable: Callable[[str], bool] = lambda _: True) -> list[str]:
  """Per class (in the mapping's order): the sorted train xyz paths, shuffled by one seeded stream, first `count`.

  `usable(path)` skips a cloud that cannot supply an anomaly (too few valid points); the next in the shuffled order
  takes its place. The caller saves the list as JSON (`anomaly_source_path.json`, algorithms.md §4.2).
  """
  rng = np.random.default_rng(seed)
  chosen = []
  for class_name, paths in train_xyz.items():
    paths = sorted(str(p) for p in paths)
    if len(paths) < count:
      raise ValueError(f'class {class_name!r} has {len(paths)} training clouds; {count} anomaly sources requested')
    picked = []
    for i in rng.permutation(len(paths)):
      if len(picked) == count:
        break
      if usable(paths[i]):
        picked.append(paths[i])
    if len(picked) < count:
      raise SynthesisError(f'class {class_name!r}: only {len(picked)} of its {len(paths)} training clouds have '
                           f'enough valid points to be anomaly sources; {count} requested (synthesis.num_sources)')
    chosen += picked
  return chosen


def can_host_anomaly(xyz: np.ndarray, perlin_size: int = 512) -> bool:
  """Whether a cloud has enough valid points for a Perlin anomaly mask (≥ 300 px at `perlin_size`², algorithms.md
  §4.2.5).

  An empty or nearly empty cloud can neither receive nor supply one; drawing it would only exhaust the attempts.
  """
  fg = cv2.resize(foreground(xyz).astype(np.uint8), (perlin_size, perlin_size), interpolation=cv2.INTER_NEAREST)
  return int(fg.sum()) >= MIN_TOTAL


def foreground(xyz: np.ndarray) -> np.ndarray:
  """All three coordinates non-zero (algorithms.md §1.4): `[..., 3]` → bool `[...]`."""
  return np.asarray(transforms.valid_mask(xyz))


def torch_nearest(x: np.ndarray, height: int, width: int) -> np.ndarray:
  """torch legacy `interpolate(mode='nearest')` to `[height, width, ...]` (algorithms.md §1.4, §4.2.4)."""
  rows = transforms.nearest_indices_torch(x.shape[0], height)
  cols = transforms.nearest_indices_torch(x.shape[1], width)
  return x[rows[:, None], cols[None, :]]


def _keep_components(mask: np.ndarray, skip_last_label: bool) -> np.ndarray:
  """4-connected components with MIN ≤ size ≤ MAX; the reference loops `range(1, n)`, dropping the last label."""
  labels, n = ndimage.label(mask, structure=_FOUR_CONNECTED)
  sizes = np.bincount(labels.ravel(), minlength=n + 1)
  keep = (sizes >= MIN_COMPONENT) & (sizes <= MAX_COMPONENT)
  keep[0] = False
  if skip_last_label and n > 0:
    keep[n] = False
  return keep[labels]


def _rotate(image: np.ndarray, angle: float, interpolation: int) -> np.ndarray:
  h, w = image.shape[:2]
  m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
  return cv2.warpAffine(image, m, (w, h), flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def perlin_mask(fg: np.ndarray, rng: np.random.Generator, *, perlin_size: int = 512, threshold: float = 0.4,
                threshold_schedule: bool = False, skip_last_label: bool = True, max_attempts: int = 2000) -> np.ndarray:
  """Perlin blobs on the foreground, as `random_perlin_mask` (algorithms.md §4.2.5): bool `[H, W]` → uint8 {0,1} `[H,
  W]`.

  The mask is drawn at `perlin_size`² (the reference's 512; the component rules count pixels there): lattice
  scales 2^U{0..4} per axis, rotation U(±90°) bilinear, `noise > threshold`, AND fg, keep 4-connected components of
  100–1600 px, accept at ≥ 300 px. `threshold_schedule` (Eyecandies) multiplies the threshold by 0.9 every 10
  attempts, floor 0.2. The reference loops forever; we raise `SynthesisError` after `max_attempts`.
  """
  h, w = fg.shape
  fg_small = cv2.resize(fg.astype(np.uint8), (perlin_size, perlin_size), interpolation=cv2.INTER_NEAREST) > 0
  if fg_small.sum() < MIN_TOTAL:  # no mask can reach MIN_TOTAL: fail now, not after max_attempts draws
    raise SynthesisError(f'the foreground has {int(fg_small.sum())} px at {perlin_size}², fewer than the {MIN_TOTAL} '
                         'an anomaly mask needs')
  thr = threshold
  for attempt in range(max_attempts):
    if threshold_schedule and attempt > 0 and attempt % 10 == 0:
      thr = max(thr * 0.9, 0.2)
    res = tuple(int(2 ** rng.integers(0, 5)) for _ in range(2))
    noise = _rotate(perlin_2d((perlin_size, perlin_size), res, rng), rng.uniform(-90, 90), cv2.INTER_LINEAR)
    mask = _keep_components((noise > thr) & fg_small, skip_last_label)
    if mask.sum() >= MIN_TOTAL:
      return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
  raise SynthesisError(f'no Perlin mask with ≥ {MIN_TOTAL} px in {max_attempts} attempts '
                       f'(foreground has {int(fg_small.sum())} px at {perlin_size}²)')


def geometric_params(class_name: str, profile: str) -> dict:
  """The class-specific torchvision chain's ranges (algorithms.md §4.2.2); `profile` is the dataset kind's `synthesis`.
  """
  if profile == 'eyecandies':
    return dict(degrees=90, flips=True, translate=0.025, scale=(0.9, 1.1))
  if class_name in MILD_AUGMENTATION_CLASSES:
    return dict(degrees=10, flips=False, translate=0.05, scale=(0.9, 1.1))
  return dict(degrees=45, flips=True, translate=0.1, scale=(0.8, 1.25))


def geometric_augment(stack: np.ndarray, class_name: str, profile: str, rng: np.random.Generator) -> np.ndarray:
  """RandomRotation → [HFlip → VFlip] → RandomAffine(translate, scale) with one set of parameters for all channels
  of `stack [H, W, C]` (rgb | xyz | xyz_orig), nearest interpolation, fill 0 (algorithms.md §4.2.2)."""
  p = geometric_params(class_name, profile)
  h, w = stack.shape[:2]
  out = np.ascontiguousarray(stack, np.float32)
  out = _rotate(out, rng.uniform(-p['degrees'], p['degrees']), cv2.INTER_NEAREST).reshape(stack.shape)
  if p['flips']:
    if rng.random() < 0.5:
      out = out[:, ::-1]
    if rng.random() < 0.5:
      out = out[::-1]
  tx = round(rng.uniform(-p['translate'] * w, p['translate'] * w))
  ty = round(rng.uniform(-p['translate'] * h, p['translate'] * h))
  m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 0.0, rng.uniform(*p['scale']))
  m[:, 2] += (tx, ty)
  out = cv2.warpAffine(np.ascontiguousarray(out), m, (w, h), flags=cv2.INTER_NEAREST,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  return out.reshape(stack.shape)


def _seeded(transform: A.BasicTransform, rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
  transform.set_random_seed(int(rng.integers(2 ** 31)))
  return lambda img: transform(image=img)['image']


def _average_blur(img, rng):
  return cv2.blur(img, (50, 50))


def _gamma(img, rng):
  out = np.empty_like(img)
  for c in range(img.shape[-1]):
    lut = np.clip(np.round(255.0 * (np.arange(256) / 255.0) ** rng.uniform(0.5, 2.0)), 0, 255).astype(np.uint8)
    out[..., c] = lut[img[..., c]]
  return out


def _brightness(img, rng):
  ycc = cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb).astype(np.float32)
  ycc[..., 0] = np.clip(ycc[..., 0] * rng.uniform(0.75, 1.7) + rng.uniform(-50, 50), 0, 255)
  return cv2.cvtColor(np.round(ycc).astype(np.uint8), cv2.COLOR_YCrCb2RGB)


def _hue_saturation(img, rng):
  hue, sat = rng.uniform(-50, 50) * 180 / 255, rng.uniform(-50, 50)
  return _seeded(A.HueSaturationValue((hue, hue), (sat, sat), (0, 0), p=1.0), rng)(img)


def _autocontrast(img, rng):
  return _seeded(A.AutoContrast(cutoff=float(rng.integers(0, 21)), method='pil', p=1.0), rng)(img)


def _elastic(img, rng):
  t = A.ElasticTransform(alpha=rng.uniform(2.5, 7.5), sigma=5, interpolation=cv2.INTER_CUBIC,
                         noise_distribution='uniform', border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0)
  return _seeded(t, rng)(img)


def _invert(img, rng):
  flip = rng.random(img.shape[-1]) < 0.05
  return np.where(flip, 255 - img, img).astype(np.uint8)


def _cartoon(img, rng):
  smooth = cv2.pyrMeanShiftFiltering(cv2.medianBlur(img, 3), sp=10, sr=20)
  hsv = cv2.cvtColor(smooth, cv2.COLOR_RGB2HSV).astype(np.float32)
  hsv[..., 1] = np.clip(hsv[..., 1] * 2.0, 0, 255)
  out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
  gray = cv2.cvtColor(smooth, cv2.COLOR_RGB2GRAY).astype(np.float32)
  grad = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
  edges = grad > np.quantile(grad, 0.99)
  out[edges] = 0
  return out


PHOTOMETRIC = (_average_blur, _gamma, _brightness, _hue_saturation, _autocontrast, _elastic, _invert, _cartoon)


def photometric_augment(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Three distinct augmenters from `PHOTOMETRIC`, in random order (the reference's `randAugmenter`). uint8 [H,W,3]."""
  out = np.ascontiguousarray(rgb)
  for i in rng.choice(len(PHOTOMETRIC), 3, replace=False):
    out = np.ascontiguousarray(PHOTOMETRIC[i](out, rng))
  return out


def _shift_target(n_fg: np.ndarray, comp: np.ndarray, rng: np.random.Generator):
  """`shift_mask`: move the component so its contour centroid lands on a random fg pixel of the centre window.

  Returns (target, source) masks, or None when the reference pastes in place (zero-area contour, empty window).
  """
  contours, _ = cv2.findContours(comp.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
  contour = max(contours, key=len)
  mom = cv2.moments(contour)
  if mom['m00'] == 0:
    return None
  cx, cy = int(mom['m10'] / mom['m00']), int(mom['m01'] / mom['m00'])
  x_min, x_max = contour[:, 0, 0].min(), contour[:, 0, 0].max()
  y_min, y_max = contour[:, 0, 1].min(), contour[:, 0, 1].max()
  h, w = comp.shape
  half_h, half_w = int((y_max - y_min) / 2), int((x_max - x_min) / 2)
  window = np.zeros_like(n_fg)
  window[half_h:h - half_h, half_w:w - half_w] = True
  ys, xs = np.nonzero(n_fg & window)
  if len(ys) == 0:
    return None
  k = rng.integers(len(ys))
  dy, dx = cy - ys[k], cx - xs[k]
  box = np.zeros_like(comp)
  box[y_min:y_max, x_min:x_max] = True  # the reference's half-open box drops the last row and column
  sy, sx = np.nonzero(comp & box)
  ty, tx = sy - dy, sx - dx
  inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
  target, source = np.zeros_like(comp), np.zeros_like(comp)
  target[ty[inside], tx[inside]] = True
  source[sy[inside], sx[inside]] = True
  return target, source


def cut_paste(n_img: np.ndarray, n_xyz: np.ndarray, n_xyz_orig: np.ndarray, n_fg: np.ndarray, comp: np.ndarray,
              a_img: np.ndarray, a_xyz: np.ndarray, rng: np.random.Generator):
  """Pastes one component (`cut_paste_scc`, algorithms.md §4.2.6); returns (n_img, n_xyz, pasted target mask).

  In place when > 2/3 of it is on `n_fg` (RGB blended with ratio U(0,0.5) of the normal image), otherwise shifted
  (RGB fully replaced). Points: re-centred, ±U(2e-4,2e-3) on all three coordinates, x/y from the original cloud.
  A component without valid target or source points (the reference would write NaNs) is skipped.
  """
  target, source = comp, comp
  shifted = (n_fg & comp).sum() <= int(2 / 3 * comp.sum())
  if shifted:
    moved = _shift_target(n_fg, comp, rng)
    if moved is None:
      shifted = False
    else:
      target, source = moved
  pts0, pts1 = n_xyz[target], a_xyz[source]
  valid0, valid1 = foreground(pts0), foreground(pts1)
  if not valid0.any() or not valid1.any():
    return n_img, n_xyz, np.zeros_like(comp)
  ratio = 0.0 if shifted else rng.uniform(0, 0.5)
  n_img = n_img.copy()
  blended = n_img[target].astype(np.float64) * ratio + a_img[source].astype(np.float64) * (1 - ratio)
  n_img[target] = np.clip(blended, 0, 255).astype(np.uint8)
  offset = rng.uniform(2e-4, 2e-3) * (1 if rng.normal() > 0 else -1)
  moved_pts = pts1[valid1] - pts1[valid1].mean(0) + pts0[valid0].mean(0) + offset
  pasted = np.zeros_like(pts1)
  pasted[valid1, :2] = n_xyz_orig[target][valid1, :2]
  pasted[valid1, 2] = moved_pts[:, 2]
  n_xyz = n_xyz.copy()
  n_xyz[target] = pasted
  return n_img, n_xyz, target


def synthesize(normal: Mapping[str, Any], donor: Mapping[str, Any], source_xyz: np.ndarray, class_name: str,
               profile: str, rng: np.random.Generator, *, source_name: str = '', perlin_size: int = 512,
               skip_last_label: bool = True) -> dict:
  """One synthetic anomaly (algorithms.md §4.2 steps 2–7) from full-resolution `load_split_full` samples.

  normal/donor: {'rgb' uint8 [S,S,3], 'xyz' [S,S,3], 'xyz_orig' [S,S,3]} (the donor needs rgb and xyz); source_xyz
  [H',W',3] an anomaly-source cloud, `source_name` its path (Eyecandies lowers the threshold for *Cane*/*Loll*).
  Returns {'rgb' uint8 [S,S,3], 'xyz' float32 [S,S,3], 'mask' uint8 [S,S] in {0, 255}}.
  """
  eyecandies = profile == 'eyecandies'  # the rules marked E in algorithms.md §4.2
  s = normal['rgb'].shape[:2]
  stack = np.concatenate([normal['rgb'].astype(np.float32), normal['xyz'], normal['xyz_orig']], -1)
  stack = geometric_augment(stack, class_name, profile, rng)
  n_img, n_xyz, n_xyz_orig = stack[..., :3].astype(np.uint8), stack[..., 3:6], stack[..., 6:9]
  n_fg = foreground(n_xyz)

  a_img = photometric_augment(donor['rgb'], rng)
  a_shape = donor['xyz'].shape[:2]
  source = torch_nearest(np.asarray(source_xyz, np.float32), *a_shape)
  a_fg = foreground(source) if eyecandies else foreground(donor['xyz']) & foreground(source)
  threshold = 0.3 if eyecandies and ('Cane' in source_name or 'Loll' in source_name) else 0.4
  a_mask = perlin_mask(a_fg, rng, perlin_size=perlin_size, threshold=threshold, threshold_schedule=eyecandies,
                       skip_last_label=skip_last_label)
  a_mask = cv2.dilate(a_mask, np.ones((3, 3), np.uint8)) > 0
  if a_mask.shape != s:
    raise ValueError(f'donor size {a_mask.shape} differs from the normal sample size {s}')

  labels, n = ndimage.label(a_mask, structure=_FOUR_CONNECTED)
  final = np.zeros(s, bool)
  for i in range(1, n + 1):
    comp = labels == i
    if comp.sum() <= MIN_COMPONENT:
      continue
    n_img, n_xyz, pasted = cut_paste(n_img, n_xyz, n_xyz_orig, n_fg, comp, a_img, source, rng)
    final |= pasted
  if eyecandies:  # algorithms.md §4.2.7
    n_img = np.where(n_fg[..., None], n_img, 0).astype(np.uint8)
    n_xyz = np.where(n_fg[..., None], n_xyz, 0)
    final &= n_fg
  return {'rgb': n_img, 'xyz': n_xyz.astype(np.float32), 'mask': final.astype(np.uint8) * 255}


def synthesize_indexed(train: Sequence[Mapping[str, Any]], load_source: Callable[[int], np.ndarray],
                       source_names: Sequence[str], class_name: str, profile: str, seed: int, index: int,
                       max_redraws: int = 10, **kwargs) -> dict:
  """Synthetic sample `index` of a class, reproducible from (seed, index) alone (so fusion-data chunks can resume).

  Draws the normal sample, a different donor and an anomaly source uniformly (algorithms.md §4.2 steps 1, 3, 4); a
  triple without an acceptable mask is redrawn. `load_source(i)` returns source cloud i of `source_names`.
  """
  rng = np.random.default_rng([seed, index])
  for _ in range(max_redraws):
    n_idx = int(rng.integers(len(train)))
    a_idx = int(rng.integers(len(train) - 1)) if len(train) > 1 else 0
    a_idx += int(len(train) > 1 and a_idx >= n_idx)
    s_idx = int(rng.integers(len(source_names)))
    try:
      return synthesize(train[n_idx], train[a_idx], load_source(s_idx), class_name, profile, rng,
                        source_name=source_names[s_idx], **kwargs)
    except SynthesisError:
      continue
  raise SynthesisError(f'{class_name}: synthetic sample {index} (seed {seed}) failed {max_redraws} draws')
