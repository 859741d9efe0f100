"""Score-map smoothing: the reference's uint8 Pillow Gaussian blur, bit-exact, and a plain float Gaussian.

The reference (`KNNGaussianBlur(4)`) quantises the map to uint8, runs Pillow's `GaussianBlur(4)` (three box-blur
passes along x, then three along y, with 24-bit fixed-point weights and rounding to uint8 after every pass) and
scales back (algorithms.md §3.3, App. A). Pillow accumulates in uint32; 255·2²⁴ + 2²³ still fits, so we do the same.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from g2sf_jax.ops import exact


def pil_box_radius(sigma: float, passes: int = 3) -> float:
  """Pillow's fractional box radius for an extended-box Gaussian of `sigma` (3.4375 for sigma 4, 3 passes)."""
  f32 = np.float32
  s2 = f32(sigma * sigma / passes)
  big_l = f32(math.sqrt(12.0 * s2 + 1.0))
  small_l = f32(math.floor((big_l - 1.0) / 2.0))
  a = f32((2 * small_l + 1) * (small_l * (small_l + 1) - 3 * s2))
  a = f32(a / (6 * (s2 - (small_l + 1) * (small_l + 1))))
  return float(small_l + a)


def _box_pass(u8: jax.Array, radius: float, axis: int) -> jax.Array:
  """One Pillow box-blur pass along `axis` of a uint32 image holding uint8 values, edges replicated."""
  r = int(radius)
  ww = int((1 << 24) / (radius * 2 + 1))
  fw = ((1 << 24) - (2 * r + 1) * ww) // 2
  size = u8.shape[axis]
  pad = [(0, 0)] * u8.ndim
  pad[axis] = (r + 1, r + 1)
  x = jnp.pad(u8, pad, mode='edge')
  tap = lambda k: jax.lax.slice_in_dim(x, k, k + size, axis=axis)
  inner = sum(tap(k) for k in range(1, 2 * r + 2))
  bulk = inner * jnp.uint32(ww) + (tap(0) + tap(2 * r + 2)) * jnp.uint32(fw)
  return (bulk + jnp.uint32(1 << 23)) >> 24


@functools.partial(jax.jit, static_argnames=('radius', 'passes'))
def pil_gaussian_blur_u8(image: jax.Array, radius: float = 4.0, passes: int = 3) -> jax.Array:
  """Pillow `ImageFilter.GaussianBlur(radius)` on a `[H, W]` uint8 image → `[H, W]` uint8 (bit-exact)."""
  box = pil_box_radius(radius, passes)
  x = image.astype(jnp.uint32)
  for axis in (1, 0):
    for _ in range(passes):
      x = _box_pass(x, box, axis)
  return x.astype(jnp.uint8)


@jax.jit
def pil_gaussian_blur(score_map: jax.Array) -> jax.Array:
  """`[H, W]` non-negative float map → `[H, W]` float32, as the reference's `KNNGaussianBlur(4)` (algorithms.md §3.3).

  `u8 = trunc(255·map/max)`, Pillow blur, then `u8/255·max`: the result has only 256 levels. An all-zero map
  stays zero (the reference would divide by zero).
  """
  m = score_map.astype(jnp.float32)
  mx = jnp.max(m)
  safe = jnp.where(mx > 0, mx, jnp.float32(1))
  u8 = (exact.divide(m, safe) * jnp.float32(255)).astype(jnp.uint8)
  blurred = pil_gaussian_blur_u8(u8)
  levels = jnp.asarray(np.arange(256, dtype=np.float32) / np.float32(255))  # torch ToTensor: u8.float() / 255
  return levels[blurred] * jnp.where(mx > 0, mx, jnp.float32(0))


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
  """Normalised 1-D Gaussian taps of radius `int(truncate·sigma + 0.5)` (scipy.ndimage's convention)."""
  r = int(truncate * sigma + 0.5)
  x = np.arange(-r, r + 1, dtype=np.float64)
  k = np.exp(-0.5 * (x / sigma) ** 2)
  return (k / k.sum()).astype(np.float32)


@functools.partial(jax.jit, static_argnames='sigma')
def float_gaussian_blur(score_map: jax.Array, sigma: float = 4.0) -> jax.Array:
  """`[H, W]` → `[H, W]` float32 separable Gaussian, half-sample-symmetric borders (scipy 'reflect').

  The intended smoothing without the reference's uint8 quantisation (`scoring.blur = 'float'`).
  """
  taps = gaussian_kernel(sigma)
  r = len(taps) // 2
  x = score_map.astype(jnp.float32)
  for axis in (0, 1):
    pad = [(0, 0), (0, 0)]
    pad[axis] = (r, r)
    xp = jnp.pad(x, pad, mode='symmetric')
    size = x.shape[axis]
    x = sum(jnp.float32(t) * jax.lax.slice_in_dim(xp, k, k + size, axis=axis) for k, t in enumerate(taps))
  return x
