"""2-D gradient (Perlin) noise on a regular lattice, the noise behind the synthetic-anomaly masks (algorithms.md
§4.2.5)."""
import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
  return ((6 * t - 15) * t + 10) * t ** 3


def perlin_2d(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
  """Noise of `shape` [H, W] with `res` lattice cells per axis (H, W divisible by res); values about in [−1, 1].

  A random unit gradient sits on each of the (res+1)² lattice points; each pixel blends the four corner ramps
  with the quintic fade, scaled by √2 so the range is about ±1.
  """
  h, w = shape
  ry, rx = res
  if h % ry or w % rx:
    raise ValueError(f'perlin_2d: shape {shape} must be divisible by res {res}')
  angles = 2 * np.pi * rng.random((ry + 1, rx + 1))
  grads = np.stack([np.cos(angles), np.sin(angles)], -1)
  y = np.arange(h) * (ry / h)
  x = np.arange(w) * (rx / w)
  iy, ix = np.floor(y).astype(int), np.floor(x).astype(int)
  fy, fx = (y - iy)[:, None], (x - ix)[None, :]

  def ramp(dy, dx):
    g = grads[iy[:, None] + dy, ix[None, :] + dx]
    return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

  ty, tx = _fade(fy), _fade(fx)
  top = ramp(0, 0) * (1 - tx) + ramp(0, 1) * tx
  bottom = ramp(1, 0) * (1 - tx) + ramp(1, 1) * tx
  return (np.sqrt(2) * (top * (1 - ty) + bottom * ty)).astype(np.float32)
