"""Inverse-distance interpolation of group features back to points (algorithms.md §2.4 step 1).

For each point: the 3 centres with the smallest *squared* distance d², weights 1/(d²+1e-8) normalised to sum 1.
G2SF does this in float64 (M3DM in float32). Here it runs in the promoted dtype of the inputs: float32 by default,
float64 when `jax_enable_x64` is on and float64 arrays are passed. Differences are taken directly (not via the
|a|²-2ab+|b|² expansion), so d² keeps float32 relative accuracy even for points on top of a centre; the float32
result differs from a float64 reference by about 1e-6 relative (tests/ops/test_interpolate.py).
"""
import functools

import jax
import jax.numpy as jnp

from g2sf_jax.ops import fps

_EPS = 1e-8  # algorithms.md §2.4: w = 1 / (d² + 1e-8).
_CHUNK = 512  # points per step: [G, 512] distances, [k, 512, C] gathered features


def _nearest(d2: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """The k smallest of each column of `d2` [G, n] (no NaN), ascending, ties to the lowest row, and their rows:
  values and indices [k, n]. Centres lie on the major axis, so every step is elementwise across the points (XLA:CPU
  runs that faster than TopK's per-row sort)."""
  rows = jax.lax.broadcasted_iota(jnp.int32, d2.shape, 0)
  free = jnp.ones(d2.shape, bool)
  values, indices = [], []
  for _ in range(k):
    low = jnp.min(jnp.where(free, d2, jnp.inf), axis=0, keepdims=True)
    first = jnp.min(jnp.where(free & (d2 == low), rows, d2.shape[0]), axis=0, keepdims=True)
    free = free & (rows != first)
    values.append(low)
    indices.append(first)
  return jnp.concatenate(values), jnp.concatenate(indices)


def _idw_cloud(centers: jax.Array, center_feats: jax.Array, points: jax.Array, k: int) -> jax.Array:
  """`idw` of one cloud: [G, 3], [G, C], [N, 3] → [N, C], `_CHUNK` points at a time."""
  n = points.shape[0]

  def one(chunk):  # [chunk, 3] -> [chunk, C]
    d2 = fps.sum_of_squares(*(centers[:, i, None] - chunk[None, :, i] for i in range(3)))  # [G, chunk]
    d2, idx = _nearest(d2, k)
    w = 1.0 / (d2 + _EPS)
    w = w / jnp.sum(w, axis=0, keepdims=True)  # [k, chunk]
    feats = jnp.take(center_feats, idx.reshape(-1), axis=0).reshape(k, -1, center_feats.shape[-1])
    # Σ_j w_j · row_j written out: as an einsum XLA:CPU ran one [1, k] × [k, C] matmul per point.
    return functools.reduce(jnp.add, (w[j, :, None] * feats[j] for j in range(k)))

  chunk = min(n, _CHUNK)
  out = jax.lax.map(one, jnp.pad(points, ((0, -n % chunk), (0, 0))).reshape(-1, chunk, 3))
  return out.reshape(-1, center_feats.shape[-1])[:n]


@functools.partial(jax.jit, static_argnames=('k',))
def idw(centers: jax.Array, center_feats: jax.Array, points: jax.Array, k: int = 3) -> jax.Array:
  """Interpolates `center_feats` [B, G, C] at `centers` [B, G, 3] onto `points` [B, N, 3] → [B, N, C]."""
  dtype = jnp.promote_types(jnp.result_type(centers, points, center_feats), jnp.float32)
  centers, center_feats, points = (a.astype(dtype) for a in (centers, center_feats, points))
  k = min(k, center_feats.shape[1])
  return jax.vmap(functools.partial(_idw_cloud, k=k))(centers, center_feats, points)
