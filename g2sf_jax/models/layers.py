"""Layers shared by the small trained heads (LSPN, UFF, CFM): PyTorch's `nn.Linear` and `nn.LayerNorm` in Flax.

The reference models are PyTorch modules with PyTorch's default initialisation; reproducing it (weights and biases
`U(±1/√fan_in)`, algorithms.md §9.4) keeps training comparable, and the [in, out] kernel layout converts from a torch
state dict with one transpose. Matmuls use HIGHEST precision (algorithms.md, "Fidelity policy").
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST


def torch_uniform(fan_in: int):
  """PyTorch's default `nn.Linear` init for both weight and bias: U(±1/√fan_in)."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class TorchDense(nn.Module):
  """`nn.Linear` with PyTorch's init; kernel stored [in, out] (the transpose of torch's weight)."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param('kernel', torch_uniform(fan_in), (fan_in, self.features))
    bias = self.param('bias', torch_uniform(fan_in), (self.features,))
    return jnp.dot(x, kernel, precision=HIGHEST) + bias


def torch_layer_norm(eps: float = 1e-5, name: str | None = None) -> nn.LayerNorm:
  """`nn.LayerNorm` with PyTorch's defaults (eps 1e-5, scale 1, bias 0)."""
  return nn.LayerNorm(epsilon=eps, name=name)
