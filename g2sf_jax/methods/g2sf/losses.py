"""The six G²SF training losses (algorithms.md §4.5c), as pure functions of arrays.

Conventions: `normal [B]` bool (the reference's y = +1); every other row is an anomaly (y = −1). `d2 = l_0²` is the
squared unified score of the main pair. Subsets are handled with masks, so the batch keeps a static shape under jit;
a mean over an empty subset is 0.
"""
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from g2sf_jax.methods.g2sf import lspn

CONSISTENCY_MODES = ('reference', 'per_row')
_E = float(jnp.e)
EPS = 1e-5


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  mask = jnp.broadcast_to(mask, x.shape)
  return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def separation(d2: jax.Array, normal: jax.Array, margin: jax.Array, alpha: float = 2.0,
               weighted: bool = True) -> jax.Array:
  """L_sep: mean over rows of `D·clamp(D^α)` (normal) and `relu(1/(D+ε) − 1/M_s)·clamp((1/(D+ε))^α)` (anomaly).

  The clamps to [0.33, 3] are not detached (as in the reference). `weighted=False` is the validation form §4.5d.
  """
  inv = 1.0 / (d2 + EPS)
  loss_n = d2
  loss_a = jax.nn.relu(inv - 1.0 / margin)
  if weighted:
    loss_n = loss_n * jnp.clip(d2 ** alpha, 0.33, 3.0)
    loss_a = loss_a * jnp.clip(inv ** alpha, 0.33, 3.0)
  return jnp.mean(jnp.where(normal, loss_n, loss_a))


def margin(d2: jax.Array, normal: jax.Array) -> jax.Array:
  """L_mar: distances scaled by the normal maximum q; overlap of the normal and anomalous ranges, summed / B."""
  q = jnp.max(jnp.where(normal, d2, -jnp.inf))
  scaled = d2 / q
  a_bound = jnp.min(jnp.where(normal, jnp.inf, scaled))
  n_bound = jnp.max(jnp.where(normal, scaled, -jnp.inf))
  over_n = jnp.where(normal, jax.nn.relu(scaled - a_bound), 0.0)
  over_a = jnp.where(normal, 0.0, jax.nn.relu(n_bound - scaled))
  return (jnp.sum(over_n) + jnp.sum(over_a)) / d2.shape[0]


def scaling(w: jax.Array, normal: jax.Array) -> jax.Array:
  """L_sc: `mean_{anom,m}(e − w) + mean_{normal,m} relu(w − 1)` over the [n,2] slices of `w [B,2]`."""
  return _masked_mean(_E - w, ~normal[:, None]) + _masked_mean(jax.nn.relu(w - 1.0), normal[:, None])


def alignment(w_mismatched: jax.Array) -> jax.Array:
  """L_cma: `mean(e − w)` of the scales predicted for permuted (mismatched) pairs, `[B,2]`."""
  return jnp.mean(_E - w_mismatched)


def consistency(l0: jax.Array, sbar0: jax.Array, l_near: jax.Array, sbar_near: jax.Array, l_far: jax.Array,
                magnitude: float = 1.2, mode: str = 'reference') -> jax.Array:
  """L_cns over A = anchor ranks: `l0, sbar0 [B]`, `l_near, sbar_near [A,B]` (ranks 1…A), `l_far [A,B]` (A+1…2A).

  `mode='reference'` reproduces the B×B broadcast of the reference code (algorithms.md §4.5c ⚠): the ratio
  `r_j[b] = s̄_j[b]/s̄_0[b]` comes from every row b; `'per_row'` pairs it with its own row a (the intended form).
  """
  anchors = l_near.shape[0]
  ratio = sbar_near / sbar0[None]
  if mode == 'reference':
    near = jax.nn.relu(l_near[:, :, None] - magnitude * ratio[:, None, :] * l0[None, :, None])
  elif mode == 'per_row':
    near = jax.nn.relu(l_near - magnitude * ratio * l0[None])
  else:
    raise ValueError(f'g2sf.consistency must be one of {CONSISTENCY_MODES}, got {mode!r}')
  far = jax.nn.relu(l0[None] - l_far)
  near = jnp.mean(near.reshape(anchors, -1), axis=1)
  return (jnp.sum(near) + jnp.sum(jnp.mean(far, axis=1))) / anchors


def l1(params: Any) -> jax.Array:
  """Σ|W| over the six LSPN weight matrices, biases excluded."""
  return sum(jnp.sum(jnp.abs(k)) for k in lspn.kernels(params))


def total(terms: Mapping[str, jax.Array], g2sf_config) -> jax.Array:
  """`L_sep + w_margin·L_mar + w_scaling·L_sc + w_alignment·L_cma + w_consistency·L_cns + w_l1·L1` (algorithms.md
  §4.5c.5)."""
  c = g2sf_config
  return (terms['separation'] + c.w_margin * terms['margin'] + c.w_scaling * terms['scaling']
          + c.w_alignment * terms['alignment'] + c.w_consistency * terms['consistency'] + c.w_l1 * terms['l1'])
