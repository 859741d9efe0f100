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

from g2sf_jax.memory_bank import search
from g2sf_jax.memory_bank.search import QUERY_CHUNK, ShardedBank, place_bank
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


def pixel_map(patch_scores: jax.Array, blur: str = 'pil_uint8', size: int = 224) -> jax.Array:
  """`[P]` patch scores on a square grid → `[size, size]` pixel map: bilinear ×(size/grid), then the blur
  (algorithms.md §3.3 step 3). Traceable: part of a scorer's pure `apply`.

  `blur`: 'pil_uint8' (the reference's quantised Pillow blur), 'float' (Gaussian σ=4) or 'none'.
  """
  grid = math.isqrt(patch_scores.shape[0])
  if grid * grid != patch_scores.shape[0]:
    raise ValueError(f'pixel_map: {patch_scores.shape[0]} patches do not form a square grid')
  up = upsample_bilinear(jnp.asarray(patch_scores, jnp.float32).reshape(grid, grid), size)
  if blur == 'pil_uint8':
    return blur_ops.pil_gaussian_blur(up)
  if blur == 'float':
    return blur_ops.float_gaussian_blur(up, sigma=4.0)
  if blur != 'none':
    raise ValueError(f'pixel_map: blur must be one of {BLUR_MODES}, got {blur!r}')
  return up


def score_map(min_dist: np.ndarray, blur: str = 'pil_uint8', size: int = 224) -> np.ndarray:
  """`pixel_map` on the host: `[P]` patch distances → `[size, size]` float32."""
  return np.asarray(pixel_map(jnp.asarray(min_dist, jnp.float32), blur, size))


def patchcore(feats: jax.Array, rows: jax.Array, *, dim: int, num_rows: int, mesh: Mesh, k: int,
              blur: str = 'pil_uint8', reweight_eps: float = 1e-5, map_size: int = 224,
              query_chunk: int = QUERY_CHUNK) -> dict[str, jax.Array]:
  """PatchCore on one bank (algorithms.md §3.3), traceable: `feats [B, P, D]` (normalised like the bank) against a
  placed bank's `rows` → `{'image' [B], 'maps' [B, size, size], 'anchors' [B, P, k] int32, 'min_dist' [B, P]}`.

  All B·P patches go through one sharded search; `anchors` are each patch's k nearest rows, ascending (column 0 is
  the argmin, first index on ties: the reference's "topk with column 0 overwritten by argmin"). The image score is
  the largest patch distance s*, re-weighted with the distances of its patch to the 2nd and 3rd neighbours of its
  nearest row m*: `w = 1 − exp(s*/√D) / (Σ exp(d/√D) + ε)` (`reweight_eps` = ε: G²SF 1e-5, M3DM 0).
  """
  b, num_patches, _ = feats.shape
  k = min(k, num_rows)
  flat = feats.reshape(b * num_patches, dim)
  dist, idx = search.search(flat, rows, k=k, dim=dim, num_rows=num_rows, mesh=mesh, query_chunk=query_chunk)
  dist, idx = dist.reshape(b, num_patches, k), idx.reshape(b, num_patches, k)
  min_dist = dist[..., 0]
  worst = jnp.argmax(min_dist, axis=1)                                   # first maximum
  s_star = jnp.take_along_axis(min_dist, worst[:, None], 1)[:, 0]
  m_star = rows[jnp.take_along_axis(idx[..., 0], worst[:, None], 1)[:, 0], :dim]
  _, nn = search.search(m_star, rows, k=min(3, num_rows), dim=dim, num_rows=num_rows, mesh=mesh,
                        query_chunk=query_chunk)
  patch = jnp.take_along_axis(feats, worst[:, None, None], 1)[:, 0]      # [B, D]
  knn_dist = jnp.sqrt(jnp.sum(jnp.square(patch[:, None] - rows[nn[:, 1:], :dim]), axis=-1))
  root_d = jnp.sqrt(jnp.float32(dim))
  w = 1 - jnp.exp(s_star / root_d) / (jnp.sum(jnp.exp(knn_dist / root_d), axis=-1) + jnp.float32(reweight_eps))
  maps = jax.lax.map(lambda m: pixel_map(m, blur, map_size), min_dist)
  return {'image': w * s_star, 'maps': maps, 'anchors': idx, 'min_dist': min_dist}


@functools.partial(jax.jit, static_argnames=('dim', 'num_rows', 'mesh', 'k', 'blur', 'reweight_eps', 'map_size',
                                             'query_chunk'))
def _patchcore_jit(feats, rows, **static):
  return patchcore(feats, rows, **static)


def unimodal_scores_batch(feats: np.ndarray, coreset_rows: np.ndarray | ShardedBank, mesh: Mesh | None = None,
                          blur: str = 'pil_uint8', num_anchors: int = 20, map_size: int = 224,
                          query_chunk: int = QUERY_CHUNK, reweight_eps: float = 1e-5) -> list[UnimodalResult]:
  """`patchcore` on the host: `feats [B, P, D]` (normalised) against a coreset → one `UnimodalResult` per sample.

  Place the coreset once per class with `place_bank`.
  """
  bank = place_bank(coreset_rows, mesh)
  out = _patchcore_jit(jnp.asarray(feats, jnp.float32), bank.rows, dim=bank.dim, num_rows=bank.num_rows,
                       mesh=bank.mesh, k=num_anchors, blur=blur, reweight_eps=float(reweight_eps),
                       map_size=map_size, query_chunk=query_chunk)
  out = jax.device_get(out)
  return [UnimodalResult(np.float32(out['image'][i]), out['min_dist'][i], out['anchors'][i, :, 0],
                         out['anchors'][i], out['maps'][i]) for i in range(len(out['image']))]


def unimodal_scores(feats: np.ndarray, coreset_rows: np.ndarray | ShardedBank, mesh: Mesh | None = None,
                    blur: str = 'pil_uint8', num_anchors: int = 20, map_size: int = 224,
                    query_chunk: int = QUERY_CHUNK) -> UnimodalResult:
  """`feats [P, D]` (normalised, P = 3136) against `coreset_rows [m, D]` → `UnimodalResult` (algorithms.md §3.3)."""
  return unimodal_scores_batch(np.asarray(feats)[None], coreset_rows, mesh, blur, num_anchors, map_size,
                               query_chunk)[0]
