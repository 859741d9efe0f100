"""Inverse-distance interpolation of group features back to points (SPEC §2.4 step 1).

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

_EPS = 1e-8                 # SPEC §2.4: w = 1 / (d² + 1e-8).
_CHUNK_ELEMENTS = 1 << 23   # per step: [B, chunk, G] distances and [B, chunk, k, C] gathered features.


@functools.partial(jax.jit, static_argnames=('k',))
def idw(centers: jax.Array, center_feats: jax.Array, points: jax.Array, k: int = 3) -> jax.Array:
  """Interpolates `center_feats` [B, G, C] at `centers` [B, G, 3] onto `points` [B, N, 3] → [B, N, C]."""
  dtype = jnp.promote_types(jnp.result_type(centers, points, center_feats), jnp.float32)
  centers, center_feats, points = (a.astype(dtype) for a in (centers, center_feats, points))
  batch, g, c = center_feats.shape
  k = min(k, g)
  n = points.shape[1]
  chunk = max(1, min(n, _CHUNK_ELEMENTS // (batch * max(g, k * c))))
  chunks = jnp.pad(points, ((0, 0), (0, -n % chunk), (0, 0))).reshape(batch, -1, chunk, 3).swapaxes(0, 1)
  rows = center_feats.reshape(batch * g, c)
  offsets = (jnp.arange(batch) * g)[:, None, None]

  def one(chunk_points):  # [B, chunk, 3] -> [B, chunk, C]
    d2 = fps.squared_distance(centers[:, None, :, :], chunk_points[:, :, None, :])  # [B, chunk, G]
    neg, idx = jax.lax.top_k(-d2, k)
    w = 1.0 / (-neg + _EPS)
    w = w / jnp.sum(w, axis=-1, keepdims=True)
    feats = jnp.take(rows, idx + offsets, axis=0)  # row gather [B, chunk, k, C]
    return jnp.einsum('bnk,bnkc->bnc', w, feats, precision=jax.lax.Precision.HIGHEST)

  out = jax.lax.map(one, chunks).swapaxes(0, 1).reshape(batch, -1, c)  # [B, N + pad, C]
  return out[:, :n]
