"""Nearest-neighbour search over a bank split along its rows over a device mesh (algorithms.md §3.3 step 1).

Each device ranks its rows with one matmul, keeps a few candidates, recomputes their exact distances, and the
devices' candidates are merged by (distance, global row): the result does not depend on the number of devices.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from g2sf_jax import distributed
from g2sf_jax.memory_bank.normaliser import row_chunks
from g2sf_jax.ops import select

_HIGHEST = jax.lax.Precision.HIGHEST
# Extra candidates per shard ranked by the fast 2q·b−‖b‖² scores before the exact re-ranking; the fast
# formula is only off by ~1e-7·(‖q‖²+‖b‖²), far below typical neighbour gaps, so 8 is ample.
_CANDIDATE_MARGIN = 8
# Bank rows per device are a multiple of this, so the candidate selection can prune blocks of up to 32 rows (for
# 28 of 76,544 rows 4.4x faster than one `top_k`; below 16-row blocks pruning does not pay).
_SEARCH_BLOCK = 32
QUERY_CHUNK = 784  # a quarter of the 56×56 grid: a batch of samples splits into whole chunks, no padding


class ShardedBank(NamedTuple):
  """A bank placed once on a mesh: rows padded to a multiple of 32 × the device count and split along them.

  Each row is stored as `[b, ‖b‖², 0…]` (width a multiple of 8), so ranking a query `q` against the bank is one
  matmul with `[2q, −1, 0…]`: `2q·b − ‖b‖²` orders the rows as the distance does (‖q‖² is constant per query),
  with no elementwise pass over the [queries, rows] block (that pass cost half as much as the matmul on CPU).
  Padding rows carry ‖b‖² = +inf and rank last.
  """
  rows: jax.Array       # [m_pad, d_aug] float32, row-sharded: bank columns [:dim], then ‖b‖², then zeros
  dim: int              # d, the bank's feature width
  num_rows: int         # m: rows ≥ m are padding and never returned
  mesh: Mesh


def _ranking_width(dim: int) -> int:
  return -(-(dim + 1) // 8) * 8


def place_bank(bank: np.ndarray | ShardedBank, mesh: Mesh | None = None) -> ShardedBank:
  """Puts `bank [m, d]` on the caller's `mesh`. A `ShardedBank` is returned as is (`mesh` may then be omitted)."""
  if isinstance(bank, ShardedBank):
    if mesh is not None and mesh != bank.mesh:
      raise ValueError('place_bank: the bank is already placed on a different mesh')
    return bank
  if mesh is None:
    raise ValueError('place_bank: pass the mesh to place the bank on (distributed.make_mesh(); the runner has one)')
  bank = np.asarray(bank, np.float32)
  if bank.ndim != 2:
    raise ValueError(f'place_bank: expected a bank [m, d], got shape {bank.shape}')
  m, d = bank.shape
  rows = np.zeros((distributed.padded_rows(m, mesh, _SEARCH_BLOCK), _ranking_width(d)), np.float32)
  rows[:m, :d] = bank
  rows[:m, d] = np.einsum('ij,ij->i', bank, bank)  # only ranks candidates; exact distances are recomputed
  rows[m:, d] = np.inf
  return ShardedBank(distributed.shard_rows(rows, mesh), d, m, mesh)


def bank_rows(bank: ShardedBank, idx: np.ndarray) -> np.ndarray:
  """Rows `idx [...]` of a placed bank → `[..., d]` float32 on the host."""
  return np.asarray(bank.rows[jnp.asarray(idx)][..., :bank.dim])


@functools.partial(jax.jit, static_argnames=('k', 'num_candidates', 'num_rows', 'dim', 'mesh'))
def _knn_chunk(queries, rows, *, k, num_candidates, num_rows, dim, mesh):
  axis = distributed.axis_name(mesh)

  def local(q, b):
    shard_rows = b.shape[0]
    gidx = jax.lax.axis_index(axis) * shard_rows + jnp.arange(shard_rows, dtype=jnp.int32)
    ranking_q = jnp.concatenate([2 * q, -jnp.ones((q.shape[0], 1), q.dtype),
                                 jnp.zeros((q.shape[0], b.shape[1] - dim - 1), q.dtype)], axis=1)
    score = jnp.dot(ranking_q, b.T, precision=_HIGHEST)                 # 2q·b − ‖b‖², larger = nearer
    block = select.block_size(shard_rows, num_candidates, max_block=_SEARCH_BLOCK, min_block=16)
    local_idx = select.top_k_indices(score, num_candidates, block)      # [qc, kc]
    # One candidate column at a time: XLA:CPU then fuses the row gather into the reduction (7x faster than
    # gathering the [qc, kc, d] block first, which dominated for small banks).
    exact = jax.lax.map(lambda col: jnp.sum(jnp.square(q - b[col, :dim]), axis=-1), local_idx.T)
    exact = jnp.sqrt(exact.T)                                           # [qc, kc]
    cand_gidx = gidx[local_idx]
    exact = jnp.where(cand_gidx < num_rows, exact, jnp.inf)
    all_d = jax.lax.all_gather(exact, axis, axis=1, tiled=True)         # [qc, devices·kc]
    all_i = jax.lax.all_gather(cand_gidx, axis, axis=1, tiled=True)
    d, i = jax.lax.sort((all_d, all_i), dimension=1, num_keys=2)       # ties → lowest global index
    return d[:, :k], i[:, :k]

  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis)), out_specs=(P(), P()),
                       check_vma=False)(queries, rows)


def search(queries: jax.Array, rows: jax.Array, *, k: int, dim: int, num_rows: int, mesh: Mesh,
           query_chunk: int = QUERY_CHUNK) -> tuple[jax.Array, jax.Array]:
  """`knn_search` inside a traced function (a scorer's pure `apply`): `queries [q, d]` against a placed bank's
  `rows` → `(dist [q, k] float32, idx [q, k] int32)`, in the same chunks of `query_chunk` queries (the last padded
  with zeros), so it finds exactly what `knn_search` finds."""
  num_q = queries.shape[0]
  chunk = max(1, min(query_chunk, num_q))
  chunks = -(-num_q // chunk)
  padded = jnp.pad(queries.astype(jnp.float32), ((0, chunks * chunk - num_q), (0, 0)))
  num_candidates = min(k + _CANDIDATE_MARGIN, rows.shape[0] // mesh.size)
  d, i = jax.lax.map(lambda q: _knn_chunk(q, rows, k=k, num_candidates=num_candidates, num_rows=num_rows, dim=dim,
                                          mesh=mesh), padded.reshape(chunks, chunk, -1))
  return d.reshape(-1, k)[:num_q], i.reshape(-1, k)[:num_q]


def knn_search(queries: np.ndarray, bank: np.ndarray | ShardedBank, k: int, mesh: Mesh | None = None,
               query_chunk: int = QUERY_CHUNK) -> tuple[np.ndarray, np.ndarray]:
  """The `k` nearest bank rows of each query: `(dist [q, k] float32, idx [q, k] int32)`, ascending.

  The bank is split along its rows over `mesh`; each shard ranks its rows by `2q·b−‖b‖²` (one HIGHEST-precision
  matmul, see `ShardedBank`), keeps `k+8` candidates, recomputes their exact float32 distance `‖q−b‖` and the
  shards' candidates are merged by (distance, global index). The result does not depend on the number of devices.
  Note torch.cdist
  (the reference) uses the fast formula for large inputs, which is ~1e-3 relatively off for near-identical vectors.
  """
  bank = place_bank(bank, mesh)
  queries = np.asarray(queries, np.float32)
  if queries.ndim != 2 or queries.shape[1] != bank.dim:
    raise ValueError(f'knn_search: queries {queries.shape} do not match bank rows of dim {bank.dim}')
  if not 1 <= k <= bank.num_rows:
    raise ValueError(f'knn_search: k={k} must be in [1, {bank.num_rows}] (the bank size)')
  shard_rows = bank.rows.shape[0] // bank.mesh.size
  num_candidates = min(k + _CANDIDATE_MARGIN, shard_rows)
  num_q = queries.shape[0]
  chunk = max(1, min(query_chunk, num_q))
  dist = np.empty((num_q, k), np.float32)
  idx = np.empty((num_q, k), np.int32)
  for rows in row_chunks(num_q, chunk):
    q = queries[rows]
    valid = q.shape[0]
    if valid < chunk:
      q = np.concatenate([q, np.zeros((chunk - valid, q.shape[1]), np.float32)])
    d, i = _knn_chunk(distributed.replicate(q, bank.mesh), bank.rows, k=k, num_candidates=num_candidates,
                      num_rows=bank.num_rows, dim=bank.dim, mesh=bank.mesh)
    dist[rows] = np.asarray(d)[:valid]
    idx[rows] = np.asarray(i)[:valid]
  return dist, idx
