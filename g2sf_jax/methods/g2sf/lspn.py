"""LSPN, the Local Scale Prediction Network, and the G²SF unified score (algorithms.md §4.4).

The LSPN maps a (patch, prototype) pair to two direction-aware scale factors `w = (w^R, w^P) ∈ (e⁻¹, e)²`; the global
scale θ ∈ ℝ² gives the per-modality weights σ. Modality order is (RGB, point) everywhere, as in the reference.
"""
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from g2sf_jax.models import layers

class Mlp(nn.Module):
  """Linear → ReLU → Dropout → Linear, no activation after the last layer (`Model/mlp.py`)."""
  hidden: int
  out: int
  dropout: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    x = nn.relu(layers.TorchDense(self.hidden, name='hidden')(x))
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    return layers.TorchDense(self.out, name='out')(x)


class LSPN(nn.Module):
  """`MultiModalGateNet`: w = exp(tanh(regressor([mlp_d(d) ; mlp_m(m)]))).

  Inputs: `direction [B, D]` (see `direction`) and `prototype [B, D]`, D = D_R + D_P. Returns `(w [B, 2], {'logits':
  p [B, 2]})`. Dropout needs the 'dropout' rng when `deterministic=False`.
  """
  hidden: int = 512
  emb_dim: int = 128
  dropout: float = 0.5

  @nn.compact
  def __call__(self, direction: jax.Array, prototype: jax.Array, deterministic: bool = True):
    h_d = Mlp(self.hidden, self.emb_dim, self.dropout, name='direction_mlp')(direction, deterministic)
    h_m = Mlp(self.hidden, self.emb_dim, self.dropout, name='prototype_mlp')(prototype, deterministic)
    p = Mlp(2 * self.emb_dim, 2, self.dropout, name='regressor')(jnp.concatenate([h_d, h_m], -1), deterministic)
    return jnp.exp(jnp.tanh(p)), {'logits': p}


def from_config(g2sf_config) -> LSPN:
  """The LSPN sized by `config.g2sf.{hidden, emb_dim, dropout}` (pass `config.g2sf`)."""
  c = g2sf_config
  return LSPN(hidden=c.hidden, emb_dim=c.emb_dim, dropout=c.dropout)


def init_params(model: LSPN, key: jax.Array, feature_dim: int) -> Any:
  """LSPN parameters for joint feature vectors of `feature_dim` = D_R + D_P."""
  x = jnp.zeros((1, feature_dim), jnp.float32)
  return model.init(key, x, x, deterministic=True)['params']


def direction(f: jax.Array, m: jax.Array) -> jax.Array:
  """`5·(f−m)/max(‖f−m‖₂, 1e-3)` over the joint vector (algorithms.md §4.4, §4.7: joint, not per modality). [B,D]→[B,D].
  """
  diff = f - m
  norm = jnp.sqrt(jnp.sum(diff * diff, axis=-1, keepdims=True))
  return 5.0 * diff / jnp.maximum(norm, 1e-3)


def global_scale(theta: jax.Array) -> jax.Array:
  """σ = L1-normalise((1 + tanh θ)/2); θ [2] → σ [2], [0.5, 0.5] at θ = 0 (algorithms.md §4.4)."""
  s = (1.0 + jnp.tanh(theta)) / 2.0
  return s / jnp.maximum(jnp.sum(jnp.abs(s)), 1e-12)


def modality_distances(f: jax.Array, m: jax.Array, rgb_dim: int) -> jax.Array:
  """`F.pairwise_distance` per modality, i.e. ‖f^m − m^m + 1e-6‖₂: [B,D], [B,D] → [B,2] (algorithms.md §4.4)."""
  diff = f - m + 1e-6
  sq = diff * diff
  return jnp.sqrt(jnp.stack([jnp.sum(sq[..., :rgb_dim], -1), jnp.sum(sq[..., rgb_dim:], -1)], -1))


def unified_score(dist: jax.Array, w: jax.Array, sigma: jax.Array, mu: jax.Array) -> jax.Array:
  """`l = Σ_m σ^m w^m dist^m / μ^m`: [B,2] distances and scales → [B] (algorithms.md §4.1)."""
  return jnp.sum(sigma * w * dist / mu, axis=-1)


_TORCH_NAMES = {
    'direction_mlp': 'residual_transformer.network.{i}.linear',
    'prototype_mlp': 'transformer.network.{i}.linear',
    'regressor': 'regressor.{j}',
}


def params_from_torch(state_dict: Mapping[str, Any], prefix: str = '') -> dict:
  """Converts a `MultiModalGateNet` state dict (algorithms.md §4.4 keys) into LSPN params.

  `prefix` is what precedes the documented keys in the file (e.g. 'model.'); a missing key raises KeyError naming it.
  """
  params = {}
  for module, pattern in _TORCH_NAMES.items():
    params[module] = {}
    for layer, (i, j) in zip(('hidden', 'out'), ((0, 0), (1, 3))):
      base = prefix + pattern.format(i=i, j=j)
      try:
        weight, bias = state_dict[base + '.weight'], state_dict[base + '.bias']
      except KeyError as e:
        raise KeyError(f'LSPN state dict lacks {e.args[0]!r} (expected algorithms.md §4.4 key names)') from None
      params[module][layer] = {'kernel': jnp.asarray(np.asarray(weight, np.float32).T),
                               'bias': jnp.asarray(np.asarray(bias, np.float32))}
  return params


def kernels(params: Any) -> Sequence[jax.Array]:
  """The six weight matrices (no biases), for the L1 penalty (algorithms.md §4.5c)."""
  return [params[m][layer]['kernel'] for m in _TORCH_NAMES for layer in ('hidden', 'out')]
