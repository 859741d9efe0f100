"""The synthetic fusion dataset: per foreground patch, features, raw unimodal NN distances, labels and anchors
(algorithms.md §4.3).

`build` works through the synthetic samples in chunks; each chunk is written atomically to `chunks/` as soon as it is
done, so an interrupted build resumes at the first missing chunk. The chunks are then joined into `.npy` files that
`load` memory-maps (the MVTec set is 8–15 GB of features, algorithms.md §8), and removed. They are stored uncompressed:
zlib took 7.8 s per 217 MB chunk of a full-size class here (6.5 min per class) to save a quarter of a disk space that is
freed at the end anyway.
"""
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Callable, Mapping

import cv2
import numpy as np

from g2sf_jax import features, io, memory_bank
from g2sf_jax.errors import MissingInputError

_FIELDS = ('feature', 'score', 'label', 'anchor_idx')
_META = 'fusion_meta.json'


@dataclasses.dataclass(frozen=True)
class FusionData:
  """M foreground patches of the synthetic images (background rows dropped, `remove_bg=True`).

  feature [M, D_R + D_P] float32: [IMG (normalised, upsampled to 56) | PCD]; score [M, 2]: raw NN distances (s^R,
  s^P); label [M] uint8: 1 = anomalous patch; anchor_idx [M, 2A] int32: the A nearest IMG coreset rows | the A
  nearest PCD rows (A = `memory_bank.num_anchors`, 20 in the reference).
  """
  feature: np.ndarray
  score: np.ndarray
  label: np.ndarray
  anchor_idx: np.ndarray


def patch_labels(mask: np.ndarray) -> np.ndarray:
  """3×3-dilated 224 mask sampled at [4i, 4j] (torch nearest 224→56): `[224, 224]` → `[3136]` uint8 (algorithms.md
  §4.3.1)."""
  if mask.shape != (224, 224):
    raise ValueError(f'patch_labels expects a [224, 224] mask, got {mask.shape}')
  dilated = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
  return (dilated[::4, ::4] > 0).astype(np.uint8).reshape(-1)


Coresets = tuple[memory_bank.ShardedBank, memory_bank.ShardedBank]


def chunk_rows(img: np.ndarray, pcd: np.ndarray, mask: np.ndarray, coresets: Coresets,
               num_anchors: int) -> dict[str, np.ndarray]:
  """The fusion rows of n samples.

  img [n, h, w, D_R] normalised IMG features (h = 28 is nearest-upsampled to 56); pcd [n, 56, 56, D_P] raw PCD
  features; mask [n, 224, 224] synthetic GT; coresets (img, pcd) placed on the run's mesh (`place_bank`).
  """
  n = img.shape[0]
  img = features.to_grid(img)
  if pcd.shape[1:3] != (features.GRID, features.GRID) or mask.shape != (n, 224, 224):
    raise ValueError(f'fusion chunk shapes: img {img.shape}, pcd {pcd.shape}, mask {mask.shape}; expected '
                     f'[n,56|28,..,D], [n,56,56,D], [n,224,224]')
  img = img.reshape(n * features.GRID ** 2, -1).astype(np.float32)
  pcd = pcd.reshape(n * features.GRID ** 2, -1).astype(np.float32)
  label = np.concatenate([patch_labels(m) for m in np.asarray(mask)])
  fg = ~features.background_mask(pcd)  # algorithms.md §4.3.2
  img, pcd, label = img[fg], pcd[fg], label[fg]
  dist_r, idx_r = memory_bank.knn_search(img, coresets[0], num_anchors)
  dist_p, idx_p = memory_bank.knn_search(pcd, coresets[1], num_anchors)
  return {'feature': np.concatenate([img, pcd], -1),
          'score': np.stack([np.asarray(dist_r)[:, 0], np.asarray(dist_p)[:, 0]], -1).astype(np.float32),
          'label': label,
          'anchor_idx': np.concatenate([np.asarray(idx_r), np.asarray(idx_p)], -1).astype(np.int32)}


def build(out_dir, num_samples: int, make_chunk: Callable[[np.ndarray], Mapping[str, np.ndarray]],
          coresets: Coresets, *, num_anchors: int, chunk_size: int = 16) -> FusionData:
  """Builds (or resumes) the fusion dataset of `num_samples` synthetic images in `out_dir`.

  `make_chunk(indices [n] int)` returns {'img', 'pcd', 'mask'} for those synthetic-sample indices (see `chunk_rows`);
  it must depend only on the indices (seed the synthesis per index) so a resumed build is the same build.
  """
  out_dir = Path(out_dir)
  meta = {'num_samples': int(num_samples), 'chunk_size': int(chunk_size), 'num_anchors': int(num_anchors),
          'coreset_rows': [int(coresets[0].num_rows), int(coresets[1].num_rows)]}
  chunk_dir = out_dir / 'chunks'
  if (out_dir / _META).is_file() and json.loads((out_dir / _META).read_text()) == meta:
    shutil.rmtree(chunk_dir, ignore_errors=True)  # what an interruption after the join left behind
    return load(out_dir)
  chunk_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  for start in range(0, num_samples, chunk_size):
    path = chunk_dir / f'chunk_{start:06d}_{chunk_size}.npz'
    paths.append(path)
    if path.is_file():
      continue
    indices = np.arange(start, min(start + chunk_size, num_samples))
    arrays = make_chunk(indices)
    rows = chunk_rows(np.asarray(arrays['img']), np.asarray(arrays['pcd']), np.asarray(arrays['mask']), coresets,
                      num_anchors)
    io.save_npz_atomic(path, compress=False, **rows)
  _join(paths, out_dir)
  with io.atomic_write(out_dir / _META, 'w') as f:
    f.write(json.dumps(meta))
  shutil.rmtree(chunk_dir)
  return load(out_dir)


def _join(paths: list[Path], out_dir: Path) -> None:
  """Concatenates the chunk files into one `.npy` per field without holding them all in memory."""
  counts = []
  for p in paths:
    with np.load(p) as z:
      counts.append(len(z['label']))
  with np.load(paths[0]) as z:
    templates = {k: z[k] for k in _FIELDS}
  for field in _FIELDS:
    t = templates[field]
    with io.atomic_write(out_dir / f'{field}.npy') as f:  # the memmap writes through the temporary's name
      out = np.lib.format.open_memmap(f.name, mode='w+', dtype=t.dtype, shape=(sum(counts),) + t.shape[1:])
      offset = 0
      for p, n in zip(paths, counts):
        with np.load(p) as z:
          out[offset:offset + n] = z[field]
        offset += n
      out.flush()
      del out


def load(out_dir) -> FusionData:
  """Memory-maps a finished fusion dataset (read-only)."""
  out_dir = Path(out_dir)
  if not (out_dir / _META).is_file():
    raise MissingInputError(f'no finished fusion dataset in {out_dir}; build it with '
                            'python -m experiments.run --config.stages=fusion_data')
  return FusionData(**{k: np.load(out_dir / f'{k}.npy', mmap_mode='r') for k in _FIELDS})
