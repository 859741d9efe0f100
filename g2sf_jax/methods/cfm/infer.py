"""CFM's anomaly maps and scores (official `cfm_inference.py`).

Per pixel, each network's prediction is compared with the observed feature of the other modality as the Euclidean
distance between the L2-normalised vectors (`cfm.distance='euclid'`, the code: √(2 − 2cos), though the variables
are named "cos"; 'cosine' = 1 − cos); background pixels are 0; the map is the product of the two distances,
smoothed by five 5×5 and three 7×7 box filters with zero padding (≈ a Gaussian of σ 4.7), at 224×224.

`cfm.normalisation='reference'` keeps the code's three per-image normalisations of the smoothed map S: the image
score is `max(S / √mean(S[S≠0]))`, the pixel-AUROC map `S / √mean(S)` (all pixels) and the AUPRO map
`S / mean(S[S≠0])`; 'none' uses S for all three.
"""
import functools

import jax
import jax.numpy as jnp

from g2sf_jax.methods.cfm import mlp as cfm_mlp
from g2sf_jax.ops import exact

SIZE = 224


def _normalise(x: jax.Array) -> jax.Array:
  """`F.normalize(dim=-1)`: x / max(‖x‖, 1e-12)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _box(x: jax.Array, size: int) -> jax.Array:
  """`conv2d` with a size×size kernel of 1/size², zero padding size//2: [B, H, W] → [B, H, W]."""
  kernel = jnp.full((size, size, 1, 1), 1.0 / (size * size), jnp.float32)
  out = jax.lax.conv_general_dilated(x[..., None], kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     precision=jax.lax.Precision.HIGHEST)
  return out[..., 0]


def smooth(x: jax.Array) -> jax.Array:
  """Five 5×5 box passes, then three 7×7 (the reference's approximation of a Gaussian): [B, H, W]."""
  for _ in range(5):
    x = _box(x, 5)
  for _ in range(3):
    x = _box(x, 7)
  return x


@functools.partial(jax.jit, static_argnames='distance')
def raw_maps(params: dict, rgb: jax.Array, pcd: jax.Array, background: jax.Array, distance: str = 'euclid'):
  """rgb [B, P, Dr], pcd [B, P, Dp], background [B, P] → smoothed maps S [B, 224, 224] (P = 224²)."""
  pcd_pred = cfm_mlp.FeatureProjectionMLP(pcd.shape[-1]).apply({'params': params['2d_to_3d']}, rgb)
  rgb_pred = cfm_mlp.FeatureProjectionMLP(rgb.shape[-1]).apply({'params': params['3d_to_2d']}, pcd)
  if distance == 'euclid':
    d3 = jnp.linalg.norm(_normalise(pcd_pred) - _normalise(pcd), axis=-1)
    d2 = jnp.linalg.norm(_normalise(rgb_pred) - _normalise(rgb), axis=-1)
  else:
    d3 = 1 - jnp.sum(_normalise(pcd_pred) * _normalise(pcd), -1)
    d2 = 1 - jnp.sum(_normalise(rgb_pred) * _normalise(rgb), -1)
  combined = jnp.where(background, 0.0, d2) * jnp.where(background, 0.0, d3)
  return smooth(combined.reshape(-1, SIZE, SIZE))


def scores(smoothed: jax.Array, normalisation: str = 'reference') -> tuple[jax.Array, jax.Array, jax.Array]:
  """S [B, 224, 224] → (image scores [B], pixel-AUROC maps [B, 224, 224], AUPRO maps [B, 224, 224]), float32;
  traceable. A map without any non-zero pixel (no foreground) stays 0 with score 0."""
  s = jnp.asarray(smoothed, jnp.float32)
  if normalisation == 'none':
    return s.reshape(s.shape[0], -1).max(1), s, s
  count = jnp.sum(s != 0, axis=(1, 2))
  fg_mean = jnp.where(count > 0, jnp.sum(s, axis=(1, 2)) / jnp.maximum(count, 1).astype(jnp.float32), 0.0)
  all_mean = jnp.mean(s, axis=(1, 2))

  def safe(d):
    d = d[:, None, None]
    return jnp.where(d > 0, exact.divide(s, jnp.where(d > 0, d, 1.0)), 0.0)

  return safe(jnp.sqrt(fg_mean)).reshape(s.shape[0], -1).max(1), safe(jnp.sqrt(all_mean)), safe(fg_mean)
