"""Exact top-k selection in two stages, for rows much longer than k (the bank search).

XLA:CPU's `lax.top_k` costs grow with both the row length N and k (k = 28 of 76,544: 120 ms for 784 rows). Here it
runs twice on short rows instead: once on the maxima of blocks of `block` consecutive entries, once on the
entries of the k best blocks (7.7 ms and 27 ms for k = 28 of 7,680 and of 76,544, against 20 ms and 120 ms).
"""
import jax
import jax.numpy as jnp


def block_size(n: int, k: int, max_block: int = 1 << 30, min_block: int = 2) -> int:
  """Entries per block for `top_k_indices`: the largest power of two ≤ `max_block` dividing N and leaving at least
  8k blocks, or 1 (plain `top_k`) when that is below `min_block` (too few blocks for pruning to pay)."""
  block = 1
  while 2 * block <= max_block and n % (2 * block) == 0 and n // (2 * block) >= 8 * k:
    block *= 2
  return block if block >= min_block else 1


def top_k_indices(x: jax.Array, k: int, block: int) -> jax.Array:
  """Indices [B, k] of the k largest of `x [B, N]` (N a multiple of `block`), ties to the lowest index: exactly
  `lax.top_k(x, k)[1]`.

  The candidates are the k blocks with the largest maxima, in index order. Exact: each of those blocks holds an
  entry at least as large, and earlier among equals, as anything in a block left out, so k candidates beat every
  entry left out; `top_k` is stable and the candidates keep the entries' order, so ties resolve as on the full row.
  """
  if block == 1:
    return jax.lax.optimization_barrier(jax.lax.top_k(x, k)[1])  # see `best` below
  batch, n = x.shape
  blocks = x.reshape(batch, n // block, block)
  chosen = jnp.sort(jax.lax.top_k(jnp.max(blocks, axis=2), k)[1], axis=1)  # [B, k] block ids, ascending
  candidates = jnp.take_along_axis(blocks, chosen[:, :, None], axis=1).reshape(batch, k * block)
  # positions in the candidates, whose order is the entries' order; the barrier keeps XLA:CPU's fast TopK, which
  # it drops when the indices have several users (3-5x slower)
  best = jax.lax.optimization_barrier(jax.lax.top_k(candidates, k)[1])
  return jnp.take_along_axis(chosen, best // block, axis=1) * block + best % block
