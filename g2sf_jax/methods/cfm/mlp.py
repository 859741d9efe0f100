"""CFM's crossmodal mapping network (`models/feature_transfer_nets.py::FeatureProjectionMLP`), a pure Flax module.

Linear(in → h) → GELU → Linear(h → h) → GELU → Linear(h → out), h = (in + out) // 2 (960 for DINO 768 ↔ PointMAE
1152), exact GELU, no dropout or normalisation; PyTorch's default initialisation. CFM trains one per direction
(2D→3D and 3D→2D) per class (`methods/cfm/`).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from g2sf_jax.models import layers


class FeatureProjectionMLP(nn.Module):
  """`x [..., in] → [..., out]`."""
  out: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = (x.shape[-1] + self.out) // 2
    x = nn.gelu(layers.TorchDense(hidden, name='input')(x), approximate=False)
    x = nn.gelu(layers.TorchDense(hidden, name='projection')(x), approximate=False)
    return layers.TorchDense(self.out, name='output')(x)


def init_params(model: FeatureProjectionMLP, key: jax.Array, in_dim: int):
  return model.init(key, jnp.zeros((1, in_dim), jnp.float32))['params']


def params_from_torch(state: dict) -> dict:
  """A `FeatureProjectionMLP` state dict (NumPy arrays, `input.weight`, …) → Flax params."""
  out: dict = {}
  for key, value in state.items():
    layer, leaf = key.split('.')
    out.setdefault(layer, {})['kernel' if leaf == 'weight' else 'bias'] = jnp.asarray(value.T if leaf == 'weight'
                                                                                     else value)
  return out
