"""Brute-force k nearest neighbours and PointMAE grouping (algorithms.md §2.2).

Distances are exact float32 differences (not the |a|²-2ab+|b|² expansion). Each query first searches the points of
its 32 nearest boxes (runs of 32 consecutive points: in an organised scan's raster order, short row segments) and
keeps that answer where it is provably exact; the other queries, or all of them when many fail (an unorganised
cloud), are redone over every point in query chunks that keep the [N, chunk] distance blocks in cache. Both give
the same indices. Ties go to the lowest point index (every candidate list is in index order and `ops.smallest`
ranks by (distance, position)). Padded points (`valid == False`) are never neighbours; points with a non-finite
coordinate are at infinity.

Each cloud is searched by its own program, mapped over the batch with `vmap`: a batch sharded over a device mesh
is then searched where it lies, with no gather (the selections avoid `lax.top_k`, which XLA's partitioner
gathers onto every device).

Fewer valid points than k: the valid points come first, sorted by distance, and the remaining slots repeat them
cyclically (slot j holds the neighbour of slot j mod n_valid). The reference would fail here (`topk` with k > N);
repeats leave max-pooling unchanged. A cloud with no valid point gets index 0 everywhere.
"""
import functools

import jax
import jax.numpy as jnp

from g2sf_jax.ops import fps
from g2sf_jax.ops import select
from g2sf_jax.ops import smallest

_CHUNK_ELEMENTS = 1 << 22  # distance-block budget per chunk: 16 MB of float32 (cache-sized: 1.7x faster than 64 MB)
# Box search (`_boxed`): boxes of 32 consecutive points, the 32 with the lowest bounds searched (1,024 candidates);
# on a 25k-point organised scan ~97% of the 128-NN queries are then provably exact, the rest are redone.
_BOX_POINTS = 32
_BOXES = 32
_ROWS_PER_CHUNK = 512  # queries per box search step: its [1,024, 512] candidate blocks (2 MB each) stay in cache
_FALLBACK_SHARE = 16  # up to S/16 inexact queries per cloud are redone alone; with more, the whole batch is redone


def _balanced(s: int, budget: int) -> int:
  """Queries per chunk: the fewest chunks of at most `budget` (≥ 1), evened out so padding stays under one per chunk."""
  chunks = -(-s // max(1, budget))
  return -(-s // chunks)


def _exact(planes, valid, queries, k: int) -> jax.Array:
  """[B, S, k] k-NN by full distance rows, chunked over the queries (always exact; the fallback of `_boxed`)."""
  batch, n = valid.shape
  chunk = _balanced(queries.shape[1], _CHUNK_ELEMENTS // (batch * n))
  return jax.vmap(functools.partial(_exact_cloud, k=k, chunk=chunk))(planes, valid, queries)


def _exact_cloud(planes, valid, queries, k: int, chunk: int) -> jax.Array:
  """`_exact` of one cloud: x, y, z [N], valid [N], queries [S, 3] -> [S, k]; [N, chunk] distance blocks."""
  s = queries.shape[0]
  block = select.block_size(valid.shape[0], k)

  def nearest(query):  # [C, 3] -> [k, C]
    d = fps.sum_of_squares(*(p[:, None] - query[:, i] for i, p in enumerate(planes)))
    return smallest.smallest_k(jnp.where(valid[:, None], d, jnp.inf), k, block)[0]

  idx = jax.lax.map(nearest, jnp.pad(queries, ((0, -s % chunk), (0, 0))).reshape(-1, chunk, 3))  # [chunks, k, C]
  return idx.swapaxes(1, 2).reshape(-1, k)[:s]


def _boxed(planes, valid, queries, k: int) -> tuple[jax.Array, jax.Array]:
  """k-NN [B, S, k] among the points of the `_BOXES` boxes nearest each query, and whether that is exact [B, S].

  A box is `_BOX_POINTS` consecutive points with their bounding box; in an organised scan's raster order it is a
  short row segment. Its lower bound `Σ gap²` (gap: query to box per axis, the same float operations as a point
  distance, so never above any of its points' rounded distances) ranks the boxes; the points of the best
  `_BOXES`, in index order, are the candidates. The result is exact (ties included) when the k-th candidate
  distance is below the next box's bound: no point left out can be as near. Both selections run on [candidates,
  queries] blocks through `ops.smallest`, `_ROWS_PER_CHUNK` queries (of all the clouds given) at
  a time.
  """
  batch, s = queries.shape[:2]
  chunk = _balanced(s, _ROWS_PER_CHUNK // batch)
  return jax.vmap(functools.partial(_boxed_cloud, k=k, chunk=chunk))(planes, valid, queries)


def _boxed_cloud(planes, valid, queries, k: int, chunk: int) -> tuple[jax.Array, jax.Array]:
  """`_boxed` of one cloud: x, y, z [N], valid [N], queries [S, 3] -> k-NN [S, k], exact [S]."""
  n, s = valid.shape[0], queries.shape[0]
  boxes = n // _BOX_POINTS
  finite = valid & jnp.isfinite(planes[0]) & jnp.isfinite(planes[1]) & jnp.isfinite(planes[2])  # others: d = inf
  inside = finite.reshape(boxes, _BOX_POINTS, 1)
  extents = [(jnp.min(jnp.where(inside, p, jnp.inf), axis=1), jnp.max(jnp.where(inside, p, -jnp.inf), axis=1))
             for p in (p.reshape(boxes, _BOX_POINTS, 1) for p in planes)]                  # (lo, hi) [boxes, 1]
  columns = [c[:, None] for c in (*planes, valid)]                                         # x, y, z, valid [N, 1]
  offsets = jnp.arange(_BOX_POINTS)[:, None]

  def search(query):  # [C, 3] -> k-NN [k, C], exact [C]
    coords = [query[:, i] for i in range(3)]
    gaps = [jnp.maximum(jnp.maximum(lo - q, q - hi), 0.0) for (lo, hi), q in zip(extents, coords)]
    bounds = fps.sum_of_squares(*gaps)                                                     # [boxes, C]
    next_bound = smallest.kth_smallest(bounds, _BOXES + 1)
    chosen = smallest.first_k(bounds, _BOXES, next_bound)                                  # ascending box ids
    cand = (chosen[:, None, :] * _BOX_POINTS + offsets).reshape(_BOXES * _BOX_POINTS, -1)  # [mL, C] index order
    x, y, z, ok = (jnp.take_along_axis(c, cand, axis=0) for c in columns)
    d = jnp.where(ok, fps.sum_of_squares(x - coords[0], y - coords[1], z - coords[2]), jnp.inf)
    best, kth = smallest.smallest_k(d, k)                                                  # [k, C], [C]
    return jnp.take_along_axis(cand, best, axis=0), kth < next_bound

  pad = -s % chunk
  # [chunks, k, C], [chunks, C]
  idx, exact = jax.lax.map(search, jnp.pad(queries, ((0, pad), (0, 0))).reshape(-1, chunk, 3))
  return idx.swapaxes(1, 2).reshape(-1, k)[:s], exact.reshape(-1)[:s]


def _with_fallback(planes, valid, queries, k: int, share: int = _FALLBACK_SHARE) -> jax.Array:
  """`_boxed`, its inexact queries (up to S/share per cloud) redone by `_exact`; all of them when more fail."""
  idx, exact = _boxed(planes, valid, queries, k)
  batch, s = exact.shape
  capacity = max(1, s // share)
  chunk = _balanced(capacity, _CHUNK_ELEMENTS // (batch * valid.shape[1]))

  def redo(planes, valid, queries, idx, exact):  # one cloud
    rank = jnp.cumsum(~exact) - 1
    slot = jnp.where(~exact & (rank < capacity), rank, capacity)                       # capacity: not redone
    ids = jnp.zeros(capacity + 1, jnp.int32).at[slot].set(jnp.arange(s, dtype=jnp.int32))[:capacity]
    redone = _exact_cloud(planes, valid, queries[ids], k, chunk)
    target = jnp.where(jnp.arange(capacity) < jnp.sum(~exact), ids, s)                   # s: dropped
    return idx.at[target].set(redone, mode='drop')

  idx = jax.vmap(redo)(planes, valid, queries, idx, exact)
  overflow = jnp.any(jnp.sum(~exact, axis=1) > capacity)
  return jax.lax.cond(overflow, lambda: _exact(planes, valid, queries, k), lambda: idx)


@functools.partial(jax.jit, static_argnames=('k',))
def knn_indices(points: jax.Array, valid: jax.Array, queries: jax.Array, k: int) -> jax.Array:
  """Indices [B, S, k] int32 into `points` [B, N, 3] of the k valid points nearest to each of `queries` [B, S, 3].

  The per-step blocks are sized for the B clouds given, so call it on the clouds one device holds (the backbones
  run it inside `shard_map`)."""
  points = points.astype(jnp.float32)
  queries = queries.astype(jnp.float32)
  valid = valid.astype(bool)
  batch, n, _ = points.shape
  if k > n:  # the selection needs k <= N; the extra points are padding and never chosen before a valid one.
    points = jnp.pad(points, ((0, 0), (0, k - n), (0, 0)))
    valid = jnp.pad(valid, ((0, 0), (0, k - n)))
    n = k

  planes = tuple(points[..., i] for i in range(3))  # x, y, z [B, N]
  if n % _BOX_POINTS == 0 and n // _BOX_POINTS > 4 * _BOXES and _BOXES * _BOX_POINTS >= 2 * k:
    idx = _with_fallback(planes, valid, queries, k)
  else:
    idx = _exact(planes, valid, queries, k)
  idx = idx.astype(jnp.int32)
  num_valid = jnp.maximum(jnp.sum(valid, axis=1), 1)  # [B]
  slots = jnp.arange(k)[None, :] % num_valid[:, None]  # [B, k]
  return jnp.take_along_axis(idx, slots[:, None, :], axis=2)


@functools.partial(jax.jit, static_argnames=('num_group', 'group_size'))
def group(points: jax.Array, valid: jax.Array, num_group: int,
          group_size: int) -> tuple[jax.Array, jax.Array]:
  """PointMAE `Group`: FPS centres, then each centre's kNN expressed relative to it.

  Args:
    points: [B, N, 3] raw coordinates.
    valid: [B, N] bool.
    num_group: G, the number of FPS centres.
    group_size: K, the neighbours per centre (the centre itself included).

  Returns:
    neighborhood [B, G, K, 3] (points − centre) and centers [B, G, 3].
  """
  points = points.astype(jnp.float32)
  centre_idx = fps.farthest_point_sample(points, valid, num_group)
  centers = jnp.take_along_axis(points, centre_idx[:, :, None], axis=1)
  idx = knn_indices(points, valid, centers, group_size)
  batch, g, k = idx.shape
  neighbours = jnp.take_along_axis(points, idx.reshape(batch, g * k, 1), axis=1).reshape(batch, g, k, 3)
  return neighbours - centers[:, :, None, :], centers
