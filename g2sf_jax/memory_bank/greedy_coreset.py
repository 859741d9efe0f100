"""The greedy coreset (algorithms.md §3.2): sparse random projection, then the reference's greedy k-centre.

The bank stays on the host and is streamed in row chunks; only the projected bank goes to the devices, split along
its rows over the caller's mesh (`g2sf_jax.distributed`), and the picks do not depend on the number of devices.
"""
import functools
import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from g2sf_jax import distributed
from g2sf_jax.memory_bank.normaliser import Normaliser, row_chunks
from g2sf_jax.ops import fps

_HIGHEST = jax.lax.Precision.HIGHEST


def projection_dim(num_rows: int, eps: float = 0.9) -> int:
  """Johnson–Lindenstrauss dimension `int(4 ln n / (eps²/2 − eps³/3))` (sklearn's formula)."""
  return int(4 * math.log(num_rows) / (eps ** 2 / 2 - eps ** 3 / 3))


def sparse_projection_matrix(key: jax.Array, d_in: int, n_components: int) -> np.ndarray:
  """`[d_in, n_components]` float32 sparse random projection, density `1/√d_in` (algorithms.md §3.2).

  Entries are `±√(1/density)/√n_components` with probability density/2 each, 0 otherwise — the distribution of
  sklearn's `SparseRandomProjection`, drawn from a JAX key so runs reproduce on any platform.
  """
  density = 1 / math.sqrt(d_in)
  scale = math.sqrt(1 / density) / math.sqrt(n_components)
  u = np.asarray(jax.random.uniform(key, (d_in, n_components), jnp.float32))
  out = np.zeros((d_in, n_components), np.float32)
  out[u < density / 2] = -scale
  out[(u >= density / 2) & (u < density)] = scale
  return out


@jax.jit
def _project_chunk(x: jax.Array, matrix: jax.Array) -> jax.Array:
  return jnp.dot(x, matrix, precision=_HIGHEST)


@jax.jit
def _distances_to(z: jax.Array, z0: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(z - z0), axis=1))


def project(bank: np.ndarray, matrix: np.ndarray, normaliser: Normaliser | None = None,
            dtype: np.dtype = np.float32, chunk_rows: int = 16384) -> tuple[np.ndarray, np.ndarray]:
  """Projects `normaliser(bank) [n, d]` → `(z [n, c] dtype, dist0 [n] float32)`, one row chunk at a time.

  `dist0 = ‖z − z₀‖` in float32 before any cast: the reference's initial running minimum (algorithms.md §3.2 step 1).
  """
  normaliser = normaliser or Normaliser.identity()
  n = bank.shape[0]
  z_out = np.empty((n, matrix.shape[1]), dtype)
  dist0 = np.empty((n,), np.float32)
  matrix = jnp.asarray(matrix)
  z0 = None
  chunk_rows = min(chunk_rows, n)
  for rows in row_chunks(n, chunk_rows):
    x = normaliser(bank[rows])
    valid = x.shape[0]
    if valid < chunk_rows:  # one compiled shape for every chunk
      x = np.concatenate([x, np.zeros((chunk_rows - valid, x.shape[1]), np.float32)])
    z = _project_chunk(x, matrix)
    z0 = z[0] if z0 is None else z0  # row 0 exactly as stored, so dist0[0] == 0
    d = _distances_to(z, z0)
    z_out[rows] = np.asarray(z[:valid]).astype(dtype)
    dist0[rows] = np.asarray(d[:valid])
  return z_out, dist0


GREEDY_MODES = ('reference', 'fast')


def _greedy_dtype(fp16: bool):
  return jnp.float16 if fp16 else jnp.float32


# Rows per tile of the greedy's distance pass on CPU. XLA:CPU runs one [n, c] row-reduction fusion ~5× slower than
# the same work as a loop over [8192, c] tiles (5.5 MB of fp16 at c = 334, L2/L3-sized): 1.6–1.8× one read pass
# over the bank at MVTec size, bound by XLA:CPU's arithmetic, not by bandwidth (BENCHMARKS.md); no operation of any
# row changes. Accelerators take each device's rows as one tile: a loop over 77 tiles would launch 77 small kernels
# in each of a full PCD coreset's ~62.7k iterations.
GREEDY_TILE = 8192


def _greedy_tile(num_rows: int, mesh: Mesh, tile: int | None) -> int:
  """Tile rows for a bank of `num_rows` on `mesh`: `tile` (None: `GREEDY_TILE` on CPU, else one tile per device),
  at most one tile per device for a smaller bank."""
  per_device = -(-num_rows // mesh.size)
  if tile is None:
    tile = GREEDY_TILE if distributed.on_cpu(mesh) else per_device
  return max(1, min(tile, per_device))


@functools.partial(jax.jit, static_argnames=('fp16', 'mode', 'mesh', 'tile'), donate_argnums=1)
def _greedy_steps(z: jax.Array, carry: tuple, sq_norms: jax.Array, start: jax.Array, stop: jax.Array, *,
                  fp16: bool, mode: str, mesh: Mesh, tile: int) -> tuple:
  """Iterations [start, stop) of the greedy on the row-sharded `z`; one compiled program for any range.

  Each shard updates the running minimum of its rows, `tile` rows at a time; the shards' maxima are gathered and
  the largest wins, ties to the lowest device and so the lowest global row (each shard takes its first max),
  exactly the first argmax of one device; the winner's row is broadcast (a psum of it and zeros) as the next centre.
  """
  dt = _greedy_dtype(fp16)
  axis = distributed.axis_name(mesh)

  def local(z, mind, sq, last_row, idx, start, stop):
    rows = z.shape[0]
    offset = jax.lax.axis_index(axis) * rows
    tiles = (z.reshape(rows // tile, tile, z.shape[1]), sq.reshape(rows // tile, tile))

    def tile_distances(zl, zt, sqt):
      if mode == 'fast':  # ‖z‖² − 2 z·zₗ + ‖zₗ‖², one matrix-vector product over the bank
        d2 = sqt - 2 * jnp.dot(zt.astype(jnp.float32), zl, precision=_HIGHEST) + jnp.dot(zl, zl, precision=_HIGHEST)
        return jnp.sqrt(jnp.maximum(d2, 0)).astype(dt)
      diff = (zt.astype(jnp.float32) - zl).astype(dt).astype(jnp.float32)
      return jnp.sqrt(jnp.sum(diff * diff, axis=1)).astype(dt)

    def body(i, carry):
      mind, last_row, idx = carry
      zl = last_row.astype(jnp.float32)
      d = jax.lax.map(lambda t: tile_distances(zl, *t), tiles).reshape(rows)
      mind = jnp.minimum(mind, d)
      j_local = fps.first_argmax(mind)
      values = jax.lax.all_gather(mind[j_local], axis)
      winners = jax.lax.all_gather(j_local + offset, axis)
      j = winners[fps.first_argmax(values)]
      here = j - offset
      mine = (here >= 0) & (here < rows)
      here = jnp.clip(here, 0, rows - 1)
      mind = mind.at[here].set(jnp.where(mine, 0, mind[here]))
      last_row = jax.lax.psum(jnp.where(mine, z[here].astype(jnp.float32), 0.0), axis).astype(z.dtype)
      return mind, last_row, idx.at[i].set(j)

    return jax.lax.fori_loop(start, stop, body, (mind, last_row, idx))

  spec = P(axis)
  return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, P(), P(), P(), P()),
                       out_specs=(spec, P(), P()), check_vma=False)(z, carry[0], sq_norms, carry[1], carry[2],
                                                                     start, stop)


def greedy_k_center(z: np.ndarray | jax.Array, dist0: np.ndarray | jax.Array, k: int, fp16: bool, *, mesh: Mesh,
                    progress: Callable[[int, int], None] | None = None, seconds_per_call: float = 2.0,
                    mode: str = 'reference', tile: int | None = None) -> np.ndarray:
  """Reference greedy k-centre on the projected bank `z [n, c]` → `[k]` int32 row indices (algorithms.md §3.2).

  Starts at row 0 with running minimum `dist0`; k−1 iterations, the first re-using row 0. Each picks the first
  argmax of the running minimum and zeroes it. `fp16=True` reproduces the reference's float16 arithmetic: the
  bank, the differences and the distances are float16 (sums of squares accumulate in float32, as CUDA does).
  `mode='fast'` computes the distances as ‖z‖² − 2 z·zₗ + ‖zₗ‖² (one matrix-vector product; other rounding, so
  other picks among near ties: BENCHMARKS.md measures the cost and the effect).

  The bank's rows are split over `mesh` (one running minimum per shard, the same picks on any number of devices).
  The iterations run in device calls of about `seconds_per_call` each; `progress(done, k)` is called after each,
  so a multi-hour coreset reports its progress (and an ETA) instead of running silent. Neither this chunking nor
  the `tile` rows per distance pass (speed only; None: `_greedy_tile`'s choice for the platform) changes a single
  operation: the result is that of one loop.
  """
  if mode not in GREEDY_MODES:
    raise ValueError(f'greedy_k_center: mode must be one of {GREEDY_MODES}, got {mode!r}')
  dt = _greedy_dtype(fp16)
  z_host = np.asarray(z, dtype=dt)
  tile = _greedy_tile(z_host.shape[0], mesh, tile)
  z_dev = distributed.shard_rows(z_host, mesh, multiple=tile)
  if mode == 'fast':
    z32 = z_dev.astype(jnp.float32)
    sq = jnp.sum(z32 * z32, axis=1)
    del z32
  else:
    sq = jnp.zeros(z_dev.shape[:1], jnp.float32, device=z_dev.sharding)  # unused by the reference arithmetic
  # padding rows start at −inf: never the max
  mind = distributed.shard_rows(np.asarray(dist0).astype(dt), mesh, value=-np.inf, multiple=tile)
  carry = (mind, distributed.replicate(z_host[0], mesh), distributed.replicate(np.zeros((k,), np.int32), mesh))
  done, steps = 1, 8
  while done < k:
    stop = min(k, done + steps)
    began = time.perf_counter()
    carry = jax.block_until_ready(_greedy_steps(z_dev, carry, sq, jnp.int32(done), jnp.int32(stop), fp16=fp16,
                                                mode=mode, mesh=mesh, tile=tile))
    elapsed = time.perf_counter() - began
    steps = max(1, min(4 * steps, int(steps * seconds_per_call / max(elapsed, 1e-6))))
    done = stop
    if progress is not None:
      progress(done, k)
  return np.asarray(carry[2])


def coreset_size(num_rows: int, fraction: float) -> int:
  """`k = int(fraction·n)`, at least 1."""
  return max(1, int(fraction * num_rows))


def coreset(bank: np.ndarray, fraction: float, eps: float, key: jax.Array, fp16: bool = True,
            normaliser: Normaliser | None = None, chunk_rows: int = 16384,
            progress: Callable[[int, int], None] | None = None, size: int | None = None, *, mesh: Mesh,
            mode: str = 'reference') -> np.ndarray:
  """Sparse-random-projection greedy coreset of `normaliser(bank) [n, d]` → `[k]` int32 indices (algorithms.md §3.2).

  k = `size`, or `coreset_size(n, fraction)` when it is None.

  `key` seeds the projection (the reference's is unseeded). The bank stays on the host; only the projected
  `[n, c]` bank (c ≈ 340; float16 when `fp16`) goes to the device. When c ≥ d (FPFH's 33 dimensions; never for
  the reference's 768/1152) the greedy runs on the normalised rows themselves: sklearn would project *up*, which
  only approximates the distances it already has, at c/d times the cost (8.6× for a 100k-row FPFH bank).
  """
  if bank.ndim != 2 or bank.shape[0] < 2:
    raise ValueError(f'coreset: expected a bank [n>=2, d], got shape {bank.shape}')
  n, d = bank.shape
  c = projection_dim(n, eps)
  matrix = sparse_projection_matrix(key, d, c) if c < d else np.eye(d, dtype=np.float32)
  z, dist0 = project(bank, matrix, normaliser, np.float16 if fp16 else np.float32, chunk_rows)
  k = size if size is not None else coreset_size(n, fraction)
  if not 1 <= k <= n:
    raise ValueError(f'coreset: {k} rows requested from a bank of {n}')
  return greedy_k_center(z, dist0, k, fp16, mesh=mesh, progress=progress, mode=mode)
