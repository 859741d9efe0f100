"""Per-pixel point features to the 56×56 patch grid: AvgPool2d(3, stride 1) then AdaptiveAvgPool2d (SPEC §2.4).

Both poolings are linear and act on rows and columns independently, so together they are one small averaging
matrix `A [56, 224]` applied along each spatial axis: `out = A · X · Aᵀ` per channel. This is exact (up to float
rounding order) and never builds anything larger than the input.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np


def adaptive_bins(in_size: int, out_size: int) -> list[tuple[int, int]]:
  """PyTorch AdaptiveAvgPool bins `[floor(in·i/out), ceil(in·(i+1)/out))`; they may overlap (SPEC App. B)."""
  return [((in_size * i) // out_size, -((-in_size * (i + 1)) // out_size)) for i in range(out_size)]


def pooling_matrix(in_size: int = 224, out_size: int = 56, window: int = 3) -> np.ndarray:
  """`[out_size, in_size]` float64 weights of AvgPool1d(window, stride 1) followed by the adaptive bins."""
  pooled = in_size - window + 1
  a = np.zeros((out_size, in_size))
  for i, (start, end) in enumerate(adaptive_bins(pooled, out_size)):
    for r in range(start, end):
      a[i, r:r + window] += 1.0 / (window * (end - start))
  return a


@functools.partial(jax.jit, static_argnames='grid')
def pool_to_grid(pixel_feats: jax.Array, grid: int = 56) -> jax.Array:
  """`[B, H, W, C]` per-pixel features (zeros at invalid pixels) → `[B, grid, grid, C]` (SPEC §2.4 step 3).

  Zeros are included in the averages, exactly as `avg_pool2d(3, 1)` + `adaptive_avg_pool2d(grid)` do.
  """
  b, h, w, c = pixel_feats.shape
  a_rows = jnp.asarray(pooling_matrix(h, grid), jnp.float32)
  a_cols = jnp.asarray(pooling_matrix(w, grid), jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  # Rows first as a plain GEMM on the row-major `[H, W·C]` view (no transposed copy of the big input).
  x = jnp.einsum('ih,bhn->bin', a_rows, pixel_feats.astype(jnp.float32).reshape(b, h, w * c), precision=hi)
  return jnp.einsum('jw,biwc->bijc', a_cols, x.reshape(b, grid, w, c), precision=hi)
