"""Unimodal PatchCore scoring of test samples against a coreset (algorithms.md §3.3): each patch's distance to
its nearest coreset row, the re-weighted image score, and the pixel map (bilinear upsampling, then the blur).
"""
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from g2sf_jax.memory_bank.search import QUERY_CHUNK, ShardedBank, bank_rows, knn_search, place_bank
from g2sf_jax.ops import blur as blur_ops

# algorithms.md §3.3: the reference's quantised Pillow blur, a float Gaussian, none
BLUR_MODES = ('pil_uint8', 'float', 'none')


class UnimodalResult(NamedTuple):
  image_score: np.float32      # re-weighted max patch distance
  min_dist: np.ndarray         # [P] float32, distance to the nearest coreset row (P = grid², 3136)
  min_idx: np.ndarray          # [P] int32
  anchor_idx: np.ndarray       # [P, num_anchors] int32, ascending distance; column 0 = min_idx
  map224: np.ndarray           # [map_size, map_size] float32 pixel map (upsampled and blurred)


@functools.partial(jax.jit, static_argnames='size')
def upsample_bilinear(grid_map: jax.Array, size: int) -> jax.Array:
  """`[h, w]` → `[size, size]` like torch `interpolate(bilinear, align_corners=False)`, same operation order."""

  def taps(n_in: int):
    src = jnp.maximum((jnp.arange(size, dtype=jnp.float32) + 0.5) * jnp.float32(n_in / size) - 0.5, 0.0)
    i0 = src.astype(jnp.int32)
    i1 = jnp.where(i0 < n_in - 1, i0 + 1, i0)
    lam1 = src - i0.astype(jnp.float32)
    return i0, i1, 1 - lam1, lam1

  h0, h1, hl0, hl1 = taps(grid_map.shape[0])
  w0, w1, wl0, wl1 = taps(grid_map.shape[1])
  x = grid_map.astype(jnp.float32)
  top = wl0[None] * x[h0][:, w0] + wl1[None] * x[h0][:, w1]
  bottom = wl0[None] * x[h1][:, w0] + wl1[None] * x[h1][:, w1]
  return hl0[:, None] * top + hl1[:, None] * bottom


def score_map(min_dist: np.ndarray, blur: str = 'pil_uint8', size: int = 224) -> np.ndarray:
  """`[P]` patch distances → `[size, size]` pixel map: bilinear ×(size/grid), then the blur (algorithms.md §3.3 step 3).

  `blur`: 'pil_uint8' (the reference's quantised Pillow blur), 'float' (Gaussian σ=4) or 'none'.
  """
  grid = math.isqrt(min_dist.shape[0])
  if grid * grid != min_dist.shape[0]:
    raise ValueError(f'score_map: {min_dist.shape[0]} patches do not form a square grid')
  up = upsample_bilinear(jnp.asarray(min_dist, jnp.float32).reshape(grid, grid), size)
  if blur == 'pil_uint8':
    up = blur_ops.pil_gaussian_blur(up)
  elif blur == 'float':
    up = blur_ops.float_gaussian_blur(up, sigma=4.0)
  elif blur != 'none':
    raise ValueError(f'score_map: blur must be one of {BLUR_MODES}, got {blur!r}')
  return np.asarray(up)


def _reweighted_score(feats: np.ndarray, bank: ShardedBank, min_dist: np.ndarray, min_idx: np.ndarray,
                      eps: float) -> np.float32:
  """PatchCore re-weighting of the max patch distance with the 2nd and 3rd neighbours of m* (algorithms.md §3.3 step 2).
  """
  p = int(np.argmax(min_dist))
  s_star = min_dist[p]
  m_star = bank_rows(bank, np.array([min_idx[p]]))
  _, nn = knn_search(m_star, bank, 3)
  neighbours = bank_rows(bank, nn[0, 1:])
  knn_dist = np.sqrt(np.sum(np.square(feats[p][None] - neighbours), axis=1, dtype=np.float32))
  root_d = np.sqrt(np.float32(feats.shape[1]))
  w = 1 - np.exp(s_star / root_d) / (np.sum(np.exp(knn_dist / root_d)) + np.float32(eps))
  return np.float32(w * s_star)


def unimodal_scores_batch(feats: np.ndarray, coreset_rows: np.ndarray | ShardedBank, mesh: Mesh | None = None,
                          blur: str = 'pil_uint8', num_anchors: int = 20, map_size: int = 224,
                          query_chunk: int = QUERY_CHUNK, reweight_eps: float = 1e-5) -> list[UnimodalResult]:
  """`feats [B, P, D]` (normalised) against a coreset → one `UnimodalResult` per sample (algorithms.md §3.3).

  All B·P patches go through one sharded search; place the coreset once per class with `place_bank`.
  `reweight_eps` is the ε in the re-weighting's denominator (G²SF 1e-5; M3DM's three-bank scoring has none).
  """
  feats = np.asarray(feats, np.float32)
  bank = place_bank(coreset_rows, mesh)
  b, num_patches, dim = feats.shape
  k = min(num_anchors, bank.num_rows)
  dist, idx = knn_search(feats.reshape(b * num_patches, dim), bank, k, query_chunk=query_chunk)
  dist, idx = dist.reshape(b, num_patches, k), idx.reshape(b, num_patches, k)
  out = []
  for s in range(b):
    # Column 0 of our ascending search already is the argmin (first index on ties), i.e. the reference's
    # "topk with column 0 overwritten by argmin".
    min_dist, min_idx = dist[s, :, 0], idx[s, :, 0]
    score = _reweighted_score(feats[s], bank, min_dist, min_idx, reweight_eps)
    out.append(UnimodalResult(score, min_dist, min_idx, idx[s], score_map(min_dist, blur, map_size)))
  return out


def unimodal_scores(feats: np.ndarray, coreset_rows: np.ndarray | ShardedBank, mesh: Mesh | None = None,
                    blur: str = 'pil_uint8', num_anchors: int = 20, map_size: int = 224,
                    query_chunk: int = QUERY_CHUNK) -> UnimodalResult:
  """`feats [P, D]` (normalised, P = 3136) against `coreset_rows [m, D]` → `UnimodalResult` (algorithms.md §3.3)."""
  return unimodal_scores_batch(np.asarray(feats)[None], coreset_rows, mesh, blur, num_anchors, map_size,
                               query_chunk)[0]
