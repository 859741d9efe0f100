"""PointMAE encoder as M3DM/G²SF use it for point features (algorithms.md §2.2, §2.3).

Input is the grouped cloud from `ops.knn.group`; output is one 1152-d feature per group: the outputs of blocks
3, 7, 11 through the shared final LayerNorm, concatenated. Parameter names mirror the PyTorch modules
(`encoder/first_conv_0` = `encoder.first_conv.0`, …) so `ports/point_mae.py` is a plain renaming.

Two reference quirks are switches (algorithms.md "Fidelity policy"):
* `batchnorm='batch_stats'` (reference: the model is never put in eval mode) normalises with per-cloud statistics,
  mean and biased variance over all G×K positions of each cloud separately (B>1 does not mix clouds);
  `'running_stats'` uses the checkpoint's running mean/var.
* `drop_path='off'` (deterministic) or `'stochastic'` (reference train mode: rates linspace(0, 0.1, 12), per
  sample; needs a 'drop_path' rng).
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from g2sf_jax.models import vit

BATCHNORM_MODES = ('batch_stats', 'running_stats')
DROP_PATH_MODES = ('off', 'stochastic')


class CloudBatchNorm(nn.Module):
  """BatchNorm1d over [B, G, K, C] with statistics per cloud (algorithms.md §2.3) or from the checkpoint's running
  stats."""
  mode: str = 'batch_stats'
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,))
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,))
    running_var = self.variable('batch_stats', 'var', jnp.ones, (c,))
    if self.mode == 'batch_stats':
      mean = jnp.mean(x, axis=(1, 2), keepdims=True)
      var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)  # biased, as BN normalises
    else:
      mean, var = running_mean.value, running_var.value
    return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


class MiniPointNet(nn.Module):
  """PointMAE `Encoder`: per-point MLPs with a max-pooled global feature concatenated first."""
  out_dim: int = 384
  batchnorm: str = 'batch_stats'

  @nn.compact
  def __call__(self, neighborhood: jax.Array) -> jax.Array:  # [B, G, K, 3] -> [B, G, out_dim]
    a = vit.dense(128, 'first_conv_0')(neighborhood)
    a = nn.relu(CloudBatchNorm(self.batchnorm, name='first_conv_1')(a))
    a = vit.dense(256, 'first_conv_3')(a)
    g = jnp.broadcast_to(jnp.max(a, axis=2, keepdims=True), a.shape)
    x = jnp.concatenate([g, a], axis=-1)  # global first (algorithms.md §2.2 step 3)
    x = vit.dense(512, 'second_conv_0')(x)
    x = nn.relu(CloudBatchNorm(self.batchnorm, name='second_conv_1')(x))
    x = vit.dense(self.out_dim, 'second_conv_3')(x)
    return jnp.max(x, axis=2)


class PointMAE(nn.Module):
  dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  eps: float = 1e-5
  out_blocks: Sequence[int] = (3, 7, 11)
  drop_path_rate: float = 0.1
  batchnorm: str = 'batch_stats'
  drop_path: str = 'off'

  @nn.compact
  def __call__(self, neighborhood: jax.Array, centers: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """neighborhood [B, G, K, 3], centers [B, G, 3] → (features [B, G, dim·len(out_blocks)], intermediates).

    Intermediates: `tokens` (mini-PointNet output), `pos`, and `block_{i}` (raw block outputs [B, G, dim]).
    """
    if self.batchnorm not in BATCHNORM_MODES:
      raise ValueError(f'point_mae.batchnorm must be one of {BATCHNORM_MODES}, got {self.batchnorm!r}')
    if self.drop_path not in DROP_PATH_MODES:
      raise ValueError(f'point_mae.drop_path must be one of {DROP_PATH_MODES}, got {self.drop_path!r}')
    x = MiniPointNet(self.dim, self.batchnorm, name='encoder')(neighborhood)
    pos = vit.dense(self.dim, 'pos_embed_2')(vit.gelu(vit.dense(128, 'pos_embed_0')(centers)))
    intermediates = {'tokens': x, 'pos': pos}
    rates = np.linspace(0.0, self.drop_path_rate, self.depth)
    norm = vit.layer_norm(self.eps, 'norm')
    outputs = []
    for i in range(self.depth):
      x = vit.Block(self.num_heads, int(self.dim * self.mlp_ratio), qkv_bias=False, eps=self.eps,
                    drop_path_rate=float(rates[i]), deterministic=self.drop_path == 'off',
                    name=f'blocks_{i}')(x + pos)  # pos re-added before every block (algorithms.md §2.2)
      intermediates[f'block_{i}'] = x
      if i in self.out_blocks:
        outputs.append(norm(x))
    return jnp.concatenate(outputs, axis=-1), intermediates
