"""DINO ViT (timm `VisionTransformer` layout) and the pre-norm transformer block shared with PointMAE (algorithms.md
§2.1).

Parameter names follow the PyTorch ones (`blocks_{i}/attn/qkv`, `mlp/fc1`, …) so that `ports/dino_vit.py` is a plain
renaming. All matmuls use full float32 precision: these features feed distances and scores.
"""
import jax
import jax.numpy as jnp
from flax import linen as nn

_HIGHEST = jax.lax.Precision.HIGHEST


def gelu(x: jax.Array) -> jax.Array:
  return nn.gelu(x, approximate=False)  # PyTorch nn.GELU default: exact erf.


def layer_norm(eps: float, name: str) -> nn.LayerNorm:
  # Two-pass variance like PyTorch; the one-pass E[x²]−E[x]² loses digits on large-mean tokens.
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


def dense(features: int, name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, precision=_HIGHEST, name=name)


class Attention(nn.Module):
  """Multi-head self-attention with one fused qkv projection; rows ordered [q; k; v], heads contiguous."""
  num_heads: int
  qkv_bias: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, D] -> [B, T, D]
    b, t, d = x.shape
    head_dim = d // self.num_heads
    qkv = dense(3 * d, 'qkv', self.qkv_bias)(x).reshape(b, t, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum('bqhc,bkhc->bhqk', q * head_dim**-0.5, k, precision=_HIGHEST)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum('bhqk,bkhc->bqhc', weights, v, precision=_HIGHEST).reshape(b, t, d)
    return dense(d, 'proj')(out)


class Mlp(nn.Module):
  hidden: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return dense(x.shape[-1], 'fc2')(gelu(dense(self.hidden, 'fc1')(x)))


class Block(nn.Module):
  """Pre-norm block: y = x + DP(Attn(LN1(x))); out = y + DP(MLP(LN2(y))).

  DropPath (stochastic depth) is per sample: the whole residual branch of a sample is zeroed with probability
  `drop_path_rate`, else scaled by 1/(1−rate). It draws from the 'drop_path' rng and is off when `deterministic`.
  """
  num_heads: int
  mlp_hidden: int
  qkv_bias: bool
  eps: float
  drop_path_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self._drop_path(Attention(self.num_heads, self.qkv_bias, name='attn')(layer_norm(self.eps, 'norm1')(x)))
    return x + self._drop_path(Mlp(self.mlp_hidden, name='mlp')(layer_norm(self.eps, 'norm2')(x)))

  def _drop_path(self, branch: jax.Array) -> jax.Array:
    if self.deterministic or self.drop_path_rate == 0.0:
      return branch
    keep = 1.0 - self.drop_path_rate
    mask = jax.random.bernoulli(self.make_rng('drop_path'), keep, (branch.shape[0],) + (1,) * (branch.ndim - 1))
    return branch * mask.astype(branch.dtype) / keep


class VisionTransformer(nn.Module):
  """DINO ViT; defaults are ViT-B/8 at 224 (algorithms.md §2.1). Tests build tiny ones through the same fields."""
  img_size: int = 224
  patch_size: int = 8
  dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  eps: float = 1e-6

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """images [B, H, W, 3] ImageNet-normalised → (patch_grid [B, H/p, W/p, dim], intermediates).

    The feature is the final-norm output at the patch tokens (CLS dropped), row-major over the grid. Intermediates:
    `block_{i}` (each block's output tokens [B, 1+h·w, dim], CLS first) and `norm` (the final-norm tokens).
    """
    b, height, width, _ = images.shape
    if (height, width) != (self.img_size, self.img_size):
      raise ValueError(f'expected images [B, {self.img_size}, {self.img_size}, 3], got {images.shape}')
    h, w = height // self.patch_size, width // self.patch_size
    x = nn.Conv(self.dim, (self.patch_size, self.patch_size), strides=self.patch_size, padding='VALID',
                precision=_HIGHEST, name='patch_embed')(images).reshape(b, h * w, self.dim)
    init = nn.initializers.normal(0.02)
    cls = self.param('cls_token', init, (1, 1, self.dim))
    pos = self.param('pos_embed', init, (1, 1 + h * w, self.dim))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.dim)), x], axis=1) + pos  # CLS first, then pos.
    intermediates = {}
    for i in range(self.depth):
      x = Block(self.num_heads, int(self.dim * self.mlp_ratio), qkv_bias=True, eps=self.eps, name=f'blocks_{i}')(x)
      intermediates[f'block_{i}'] = x
    x = layer_norm(self.eps, 'norm')(x)
    intermediates['norm'] = x
    return x[:, 1:].reshape(b, h, w, self.dim), intermediates
