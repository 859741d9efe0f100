"""Bilinear resizing of feature maps with PyTorch's `interpolate(mode='bilinear', align_corners=False)` rule.

`src = (dst + 0.5)·in/out − 0.5`, clamped at 0; the upper tap clamps at the last row/column. For the upsampling
CFM does (28 → 224 RGB patch features) this is also what `jax.image.resize` computes, but spelled out here so the
rule is the reference's by construction.
"""
import functools

import jax
import jax.numpy as jnp


def _taps(n_in: int, n_out: int):
  src = jnp.maximum((jnp.arange(n_out, dtype=jnp.float32) + 0.5) * jnp.float32(n_in / n_out) - 0.5, 0.0)
  i0 = src.astype(jnp.int32)
  i1 = jnp.where(i0 < n_in - 1, i0 + 1, i0)
  lam1 = src - i0.astype(jnp.float32)
  return i0, i1, 1 - lam1, lam1


@functools.partial(jax.jit, static_argnames='size')
def bilinear(x: jax.Array, size: int) -> jax.Array:
  """`[B, h, w, C]` → `[B, size, size, C]`."""
  h0, h1, hl0, hl1 = _taps(x.shape[1], size)
  w0, w1, wl0, wl1 = _taps(x.shape[2], size)
  x = x.astype(jnp.float32)
  rows = hl0[None, :, None, None] * x[:, h0] + hl1[None, :, None, None] * x[:, h1]
  return wl0[None, None, :, None] * rows[:, :, w0] + wl1[None, None, :, None] * rows[:, :, w1]
