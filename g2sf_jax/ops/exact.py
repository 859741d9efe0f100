"""Arithmetic that XLA would otherwise round differently from NumPy and torch."""
import jax
import jax.numpy as jnp


def divide(x: jax.Array, divisor: jax.Array | float) -> jax.Array:
  """Correctly rounded `x / divisor` for a divisor that broadcasts to `x` (a scalar, or one value per sample).

  XLA rewrites division by a broadcast value into multiplication by its reciprocal, which is off by an ulp for many
  values; the barrier keeps a true elementwise division, so results match NumPy's `x / divisor` bit for bit.
  """
  x = jnp.asarray(x)
  return x / jax.lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(divisor, x.dtype), x.shape))
