"""Per-sample patch features of both modalities on the patch grids, with a resumable on-disk cache (algorithms.md
§2.4–2.5).

RGB: the backbone's own grid (`[h, w, Cr]`, 28×28 for DINO). Points: per-pixel features → `pool_to_grid` →
`[56, 56, Cp]`. Either backbone may be None (RGB-only / 3D-only runs); that modality is then absent.
"""
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np

from g2sf_jax import io
from g2sf_jax.ops import pooling

GRID = 56  # the patch grid every bank, map and fusion row is on (algorithms.md §2.4–2.5)
Backbone = Callable[[Any], Any]  # `.name`, `.dim`, `__call__(x [B,224,224,3])` (see g2sf_jax.backbones)
_INDEX = 'index.json'


def upsample_nearest2x(img: np.ndarray) -> np.ndarray:
  """`[..., h, w, C]` → `[..., 2h, 2w, C]`: cell (i, j) takes (⌊i/2⌋, ⌊j/2⌋) (IMG 28→56, algorithms.md §2.5)."""
  return np.repeat(np.repeat(img, 2, axis=-3), 2, axis=-2)


def to_grid(img: np.ndarray) -> np.ndarray:
  """`[N, h, w, C]` RGB features with h = w = 28 or 56 → `[N, 56, 56, C]` (28 is nearest-upsampled, algorithms.md §2.5).
  """
  if img.shape[1:3] == (GRID, GRID):
    return img
  if img.shape[1:3] != (GRID // 2, GRID // 2):
    raise ValueError(f'expected RGB features on a {GRID}² or {GRID // 2}² grid, got shape {img.shape}')
  return upsample_nearest2x(img)


def joint_features(img56: np.ndarray, pcd56: np.ndarray) -> np.ndarray:
  """`[..., 56, 56, Cr]`, `[..., 56, 56, Cp]` → `[..., 3136, Cr+Cp]`, RGB first, row-major cells (algorithms.md §2.5).
  """
  if img56.shape[:-1] != pcd56.shape[:-1]:
    raise ValueError(f'joint_features: grids differ, img {img56.shape} vs pcd {pcd56.shape}')
  joint = np.concatenate([img56, pcd56], axis=-1)
  return joint.reshape(joint.shape[:-3] + (-1, joint.shape[-1]))


def background_mask(pcd: np.ndarray) -> np.ndarray:
  """`[..., Cp]` pooled point features → `[...]` bool: the reference's `PCD.sum(1) == 0` (algorithms.md §2.4 step 5)."""
  return np.sum(pcd, axis=-1) == 0


def padded_size(n: int, batch_size: int) -> int:
  """The batch `n` samples are padded to: the smallest power of two ≥ n, at most `batch_size`. Few compiled shapes,
  and one scan is not computed `batch_size` times (on CPU each sample of a batch runs alone, so its features do not
  depend on the padding)."""
  size = 1
  while size < n:
    size *= 2
  return min(size, batch_size)


def _stack(samples: Sequence[dict], key: str, size: int) -> np.ndarray:
  """`[size, ...]` from `samples[key]`, repeating the last sample up to `size` (one compiled shape per size)."""
  arrays = []
  for s in samples:
    if key not in s:
      raise KeyError(f'sample {s.get("name", "?")!r} has no {key!r} (keys: {sorted(s)})')
    arrays.append(np.asarray(s[key], np.float32))
  arrays += [arrays[-1]] * (size - len(arrays))
  return np.stack(arrays)


def _extract_batch(rgb_backbone: Backbone | None, point_backbone: Backbone | None, samples: Sequence[dict],
                   size: int, kinds: Sequence[str]) -> dict[str, np.ndarray]:
  n = len(samples)
  out = {}
  if rgb_backbone is not None and 'img' in kinds:
    out['img'] = np.asarray(rgb_backbone(jnp.asarray(_stack(samples, 'rgb', size))))[:n]
  if point_backbone is not None and {'pcd', 'pcd224'} & set(kinds):
    pixel = point_backbone(jnp.asarray(_stack(samples, 'xyz', size)))
    for kind, grid in (('pcd', GRID), ('pcd224', 224)):
      if kind in kinds:
        out[kind] = np.asarray(pooling.pool_to_grid(pixel, grid=grid))[:n]
  return out


def _check_backbones(rgb_backbone, point_backbone) -> None:
  if rgb_backbone is None and point_backbone is None:
    raise ValueError('features: at least one of rgb_backbone and point_backbone is needed')


def extract(rgb_backbone: Backbone | None, point_backbone: Backbone | None, samples: Sequence[dict],
            batch_size: int = 8, kinds: Sequence[str] = ('img', 'pcd')) -> dict[str, np.ndarray]:
  """The feature `kinds` of a present backbone (float32): `img` [N, h, w, Cr], `pcd` [N, 56, 56, Cp] (the point
  features pooled to the patch grid), `pcd224` [N, 224, 224, Cp] (pooled at full size, for CFM)."""
  _check_backbones(rgb_backbone, point_backbone)
  parts = [_extract_batch(rgb_backbone, point_backbone, samples[i:i + batch_size],
                          padded_size(len(samples[i:i + batch_size]), batch_size), kinds)
           for i in range(0, len(samples), batch_size)]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def describe_backbone(backbone: Backbone | None) -> dict | None:
  """What a backbone's features depend on: name, dim and `.meta` (weights' hash, layers, parameters) if any."""
  if backbone is None:
    return None
  return {'name': getattr(backbone, 'name', type(backbone).__name__), 'dim': getattr(backbone, 'dim', None),
          'meta': getattr(backbone, 'meta', None)}


def cache_key(rgb_backbone: Backbone | None, point_backbone: Backbone | None, samples: Sequence[dict],
              batch_size: int, extra: dict | None = None) -> dict:
  """What the cached features depend on: backbones (name, dim, `.meta` if any), sample names, chunking, `extra`.

  `extra` is for what the backbones cannot tell (checkpoint meta, config switches such as drop_path).
  """
  names = [str(s.get('name', i)) for i, s in enumerate(samples)]
  return json.loads(json.dumps({
      'rgb': describe_backbone(rgb_backbone), 'point': describe_backbone(point_backbone), 'num_samples': len(names),
      'names_sha256': hashlib.sha256('\n'.join(names).encode()).hexdigest(), 'chunk_size': batch_size,
      'extra': extra or {}}, sort_keys=True, default=str))


def _chunk_path(cache_dir: Path, i: int) -> Path:
  return cache_dir / f'chunk_{i:05d}.npz'


def extract_to_cache(cache_dir: str | os.PathLike, rgb_backbone: Backbone | None, point_backbone: Backbone | None,
                     samples: Sequence[dict], batch_size: int = 8, extra_key: dict | None = None,
                     log: Callable[[str], None] = lambda _: None,
                     progress: Callable[[int], None] = lambda _: None) -> Path:
  """`extract` into a cache folder of one atomically written shard per batch of samples; returns the folder.

  Re-runs keep the shards; an interrupted run resumes at the first missing shard, and a shard that does not read
  back (truncated, corrupt) is named in the log and recomputed. When the key (`cache_key`) differs from the one in
  `index.json`, the folder's shards are stale and are deleted first. `progress(n)` is called after each shard with
  its number of samples, for progress bars.
  """
  _check_backbones(rgb_backbone, point_backbone)
  cache_dir = Path(cache_dir)
  cache_dir.mkdir(parents=True, exist_ok=True)
  key = cache_key(rgb_backbone, point_backbone, samples, batch_size, extra_key)
  index = cache_dir / _INDEX
  if index.exists() and _read_index(index) != key:
    log(f'{cache_dir}: cached features were made with other inputs; recomputing')
    for stale in cache_dir.glob('chunk_*.npz'):
      stale.unlink()
    index.unlink()
  if not index.exists():
    with io.atomic_write(index, 'w') as f:
      json.dump(key, f, indent=1, sort_keys=True)
  for i, start in enumerate(range(0, len(samples), batch_size)):
    path = _chunk_path(cache_dir, i)
    if path.exists() and _readable(path):
      progress(min(batch_size, len(samples) - start))
      continue
    if path.exists():
      log(f'{path}: cached feature chunk does not read back (truncated or corrupt); recomputing it')
    log(f'{cache_dir}: extracting samples {start}..{min(start + batch_size, len(samples)) - 1}')
    batch = samples[start:start + batch_size]
    feats = _extract_batch(rgb_backbone, point_backbone, batch, padded_size(len(batch), batch_size), ('img', 'pcd'))
    with io.atomic_write(path) as f:
      np.savez(f, **feats)
    progress(min(batch_size, len(samples) - start))
  return cache_dir


def cached_extract(cache_dir: str | os.PathLike, rgb_backbone: Backbone | None, point_backbone: Backbone | None,
                   samples: Sequence[dict], batch_size: int = 8, extra_key: dict | None = None,
                   log: Callable[[str], None] = lambda _: None,
                   progress: Callable[[int], None] = lambda _: None) -> dict[str, np.ndarray]:
  """`extract_to_cache`, then `load_cached`: the features of `samples`, computed once."""
  extract_to_cache(cache_dir, rgb_backbone, point_backbone, samples, batch_size, extra_key, log, progress)
  return load_cached(cache_dir)


def _read_index(index: Path) -> dict | None:
  try:
    return json.loads(index.read_text())
  except (OSError, json.JSONDecodeError):
    return None


def _readable(path: Path) -> bool:
  """Cheap: the zip directory sits at the end of the file, so a truncated chunk fails to open."""
  try:
    with np.load(path) as shard:
      return bool(shard.files)
  except Exception:  # zipfile, zlib and numpy raise many kinds for a damaged file
    return False


def load_cached(cache_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """The features a finished `extract_to_cache` left in `cache_dir`: `{'img': [N, h, w, Cr], 'pcd': [N, 56, 56, Cp]}`.

  Concatenates the shards into preallocated arrays (one copy of the features in memory at a time). A missing or
  damaged shard is a `FileNotFoundError` / `ValueError` naming it.
  """
  cache_dir = Path(cache_dir)
  index = _read_index(cache_dir / _INDEX)
  if index is None:
    raise FileNotFoundError(f'{cache_dir / _INDEX}: no feature cache here (run the extract stage)')
  num_samples, chunk = index['num_samples'], index['chunk_size']
  out: dict[str, np.ndarray] = {}
  row = 0
  for i in range(-(-num_samples // chunk)):
    path = _chunk_path(cache_dir, i)
    if not path.is_file():
      raise FileNotFoundError(f'{path}: feature chunk missing; re-run the extract stage to recompute it')
    try:
      with np.load(path) as shard:
        for name in shard.files:
          part = shard[name]
          if name not in out:
            out[name] = np.empty((num_samples,) + part.shape[1:], part.dtype)
          out[name][row:row + part.shape[0]] = part
    except Exception as e:
      raise ValueError(f'{path}: feature chunk does not read back ({e}); re-run the extract stage') from e
    row += part.shape[0]
  if row != num_samples:
    raise ValueError(f'{cache_dir}: shards hold {row} samples, expected {num_samples}; re-run the extract stage')
  return out
