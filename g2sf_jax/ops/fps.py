"""Farthest point sampling with the semantics of the pointnet2_ops CUDA kernel (algorithms.md §2.2).

The kernel's choices are kept because they decide which centres PointMAE sees:
* the first centre is the first point (index 0 of the valid-point list in raster order);
* a running minimum squared distance starts at 1e10 and each step takes its argmax;
* points with x²+y²+z² <= 1e-3 are skipped: never updated, never selected;
* distances are float32, summed as dx·dx + dy·dy + dz·dz (left to right).

Padding (`valid == False`, see `ops.buckets`) is treated like a skipped point. The start is the first valid index,
which is 0 for the reference layout (valid points first, padding after). Ties go to the lowest index (the kernel
breaks ties by the lowest index within a CUDA thread stride; exact float ties are rare on real clouds).

When fewer eligible points than `num_samples` exist, every eligible point is picked once and then all running
distances are 0, so the argmax repeats the lowest-indexed eligible point, as the kernel does. With no eligible point
at all, every sample is the start index.
"""
import functools

import jax
import jax.numpy as jnp

_SKIP_MAGNITUDE = 1e-3  # algorithms.md §2.2: the kernel ignores points with |p|² <= 1e-3.
_INIT_DISTANCE = 1e10   # algorithms.md §2.2: running min squared distance starts here.
_BLOCK = 128            # FPS argmax: block maxima, then one block searched (fastest of 64-4,096 on XLA:CPU)


def squared_distance(a: jax.Array, b: jax.Array) -> jax.Array:
  """Squared Euclidean distance over the last axis [..., 3], summed left to right like the CUDA kernel.

  The three squares are rounded before they are added. Within one fused kernel XLA:CPU (LLVM) and ptxas contract
  `dx·dx + dy·dy` into a fused multiply-add, which rounds once instead of twice and, on clouds with exactly tied
  distances, changes which point FPS and kNN pick (22 of 64 FPS picks on an 8³ lattice of spacing 0.1). No backend
  contracts through a select between a product and its sum (an optimization barrier does not help: XLA removes it
  before fusion); the select only turns a NaN square into +inf (a non-finite point is never valid anyway). So every
  backend computes `(dx² + dy²) + dz²` with three roundings, as the kernel does.
  """
  d = a - b
  return sum_of_squares(d[..., 0], d[..., 1], d[..., 2])


def sum_of_squares(dx: jax.Array, dy: jax.Array, dz: jax.Array) -> jax.Array:
  """`(dx² + dy²) + dz²` with three roundings on every backend (see `squared_distance`), on coordinates given as
  separate arrays: the loops below keep clouds as x, y, z planes [B, N], which vectorise better than [B, N, 3]."""
  sx, sy, sz = (jnp.where(p == p, p, jnp.inf) for p in (dx * dx, dy * dy, dz * dz))
  return (sx + sy) + sz


def first_argmax(x: jax.Array, axis: int = -1) -> jax.Array:
  """`jnp.argmax` (the lowest index of the maximum; `x` has no NaN) as two plain reductions: a max, then the
  smallest index holding it. XLA:CPU runs these several times faster than argmax's paired value/index reduce."""
  x = jnp.moveaxis(x, axis, -1)
  iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  top = jnp.max(x, axis=-1, keepdims=True)
  return jnp.min(jnp.where(x == top, iota, x.shape[-1]), axis=-1)


@functools.partial(jax.jit, static_argnames=('num_samples',))
def farthest_point_sample(points: jax.Array, valid: jax.Array, num_samples: int) -> jax.Array:
  """Returns the FPS indices [B, S] int32 of `points` [B, N, 3] restricted to `valid` [B, N] bool.

  Each of the S − 1 sequential steps is a few microseconds of arithmetic, so the loop body is kept to one pass
  over the cloud plus small reductions: points that are not eligible hold a running distance of −1, which no
  distance (≥ 0, never NaN) lowers and every eligible point outranks, so no mask is applied in the loop; the argmax
  takes the maximum of each block of `_BLOCK` points in that pass, then searches one block for the first index
  holding it, instead of a second pass over the whole cloud.
  """
  points = points.astype(jnp.float32)
  valid = valid.astype(bool)
  batch, n = points.shape[:2]
  magnitude = squared_distance(points, jnp.zeros((), jnp.float32))
  eligible = valid & (magnitude > _SKIP_MAGNITUDE)
  any_eligible = jnp.any(eligible, axis=1)
  start = jnp.argmax(valid, axis=1).astype(jnp.int32)

  pad = -n % _BLOCK  # padded points are not eligible: never picked
  planes = tuple(jnp.pad(points[..., i], ((0, 0), (0, pad))) for i in range(3))  # x, y, z [B, N + pad]
  running = jnp.where(jnp.pad(eligible, ((0, 0), (0, pad))), _INIT_DISTANCE, -1.0).astype(jnp.float32)

  def step(j, carry):
    indices, running, last = carry
    d = sum_of_squares(*(p - jnp.take_along_axis(p, last[:, None], axis=1) for p in planes))
    running = jnp.minimum(d, running)
    blocks = running.reshape(batch, -1, _BLOCK)
    block = first_argmax(jnp.max(blocks, axis=2), axis=1)                             # [B]
    within = first_argmax(jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0], axis=1)
    best = jnp.where(any_eligible, block * _BLOCK + within, start)
    return indices.at[:, j].set(best), running, best

  indices = jnp.zeros((batch, num_samples), jnp.int32).at[:, 0].set(start)
  indices, _, _ = jax.lax.fori_loop(1, num_samples, step, (indices, running, start))
  return indices
