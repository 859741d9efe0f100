"""M3DM's Unsupervised Feature Fusion block (`models/feature_fusion.py::FeatureFusionBlock`), a pure Flax module.

Per patch: the point feature and the RGB feature each go through LayerNorm → Linear(4×) → exact GELU → Linear
(no residual, dropout 0); the fused patch feature is `[point ; rgb]` of those outputs (point first, 1920-d for
PointMAE + DINO). Two linear heads map them to the 256-d space of the contrastive loss (`methods/m3dm/uff.py`),
which only training uses. PyTorch's default initialisation, so a run trains like the reference.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from g2sf_jax.models import layers


class Mlp(nn.Module):
  """timm's `Mlp` with dropout 0: fc1 → GELU (exact) → fc2."""
  hidden: int
  out: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.gelu(layers.TorchDense(self.hidden, name='fc1')(x), approximate=False)
    return layers.TorchDense(self.out, name='fc2')(x)


class UFF(nn.Module):
  """`(point [..., Dp], rgb [..., Dr]) → (fused [..., Dp + Dr], {'point', 'rgb': the two halves, 'q': [..., 256]
  from the RGB half, 'k': [..., 256] from the point half})`."""
  mlp_ratio: float = 4.0
  head_dim: int = 256

  @nn.compact
  def __call__(self, point: jax.Array, rgb: jax.Array):
    dp, dr = point.shape[-1], rgb.shape[-1]
    p = Mlp(int(dp * self.mlp_ratio), dp, name='xyz_mlp')(layers.torch_layer_norm(name='xyz_norm')(point))
    r = Mlp(int(dr * self.mlp_ratio), dr, name='rgb_mlp')(layers.torch_layer_norm(name='rgb_norm')(rgb))
    q = layers.TorchDense(self.head_dim, name='rgb_head')(r)
    k = layers.TorchDense(self.head_dim, name='xyz_head')(p)
    return jnp.concatenate([p, r], -1), {'point': p, 'rgb': r, 'q': q, 'k': k}


def init_params(model: UFF, key: jax.Array, point_dim: int, rgb_dim: int):
  return model.init(key, jnp.zeros((1, point_dim), jnp.float32), jnp.zeros((1, rgb_dim), jnp.float32))['params']


def params_from_torch(state: dict) -> dict:
  """A `FeatureFusionBlock` state dict (NumPy arrays) → UFF params (Linear [out, in] → kernel [in, out])."""
  out: dict = {}
  for key, value in state.items():
    *path, leaf = key.split('.')
    if path[-1].endswith('norm'):
      leaf = {'weight': 'scale', 'bias': 'bias'}[leaf]
    else:
      leaf, value = ('kernel', value.T) if leaf == 'weight' else ('bias', value)
    node = out
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = jnp.asarray(value)
  return out
