"""The k smallest entries of every column of [M, R] non-negative keys, exactly, without `lax.top_k`.

For the kNN search (`ops.knn`): 128 of 1,024 candidates for each of 512 queries. XLA:CPU's TopK sorts each row
with a scalar comparator and its cost grows with k (12 ms for that selection, 6 ms of it only to order the 128
winners), and XLA's SPMD partitioner gathers a batch-sharded TopK onto every device. Here the R queries lie on
the minor axis, so every step is elementwise across them (and batch axes added by `vmap` stay parallel):
* the k-th smallest value comes from bisection on the float bits (31 fused count passes: keys ≥ 0 order like
  their bit patterns);
* the keys below it, then the earliest equal to it, are placed in position order by prefix counts;
* their order by key comes from a bitonic sorting network on (key, position), a total order.
The result is `lax.top_k(-keys.T, k)[1].T` exactly (keys -0.0 and +0.0 count as equal), ties to the lowest
position, in ~5 ms for that selection on this VM.
"""
import jax
import jax.numpy as jnp

_BITS = 31              # bisection steps: [0, bits(+inf)] holds fewer than 2³¹ values
_INF_BITS = 0x7F800000
_SCAN_BLOCK = 32        # prefix counts: within blocks of 32 rows, then across blocks, each as one matmul
_EXACT_COUNTS = 1 << 24  # float32 holds every integer below this


def kth_smallest(keys: jax.Array, k: int) -> jax.Array:
  """The k-th smallest value [R] (1 ≤ k ≤ M) of each column of `keys` [M, R] (float32, ≥ 0 or +inf, no NaN)."""
  bits = jax.lax.bitcast_convert_type(keys, jnp.int32)  # -0.0 is negative here: below everything, as 0 is
  lo = jnp.zeros(keys.shape[1:], jnp.int32)
  hi = jnp.full(keys.shape[1:], _INF_BITS, jnp.int32)  # the answer stays in [lo, hi]

  def halve(_, bounds):  # a loop: unrolled, it runs no faster here and compiles several times slower
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    enough = jnp.sum((bits <= mid).astype(jnp.int32), axis=0) >= k
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

  lo, _ = jax.lax.fori_loop(0, _BITS, halve, (lo, hi))
  return jax.lax.bitcast_convert_type(lo, jnp.float32)


def _inclusive_counts(values: jax.Array) -> jax.Array:
  """Running sums [M, R] int32 of `values` [M, R] (float32 integers) down each column.

  Triangular matmuls within blocks of 32 rows, the block totals summed the same way (recursively), which XLA:CPU
  runs faster than its cumsum and compiles faster than `associative_scan`; exact while every sum is below 2²⁴.
  """
  m, r = values.shape
  x = jnp.pad(values, ((0, -m % _SCAN_BLOCK), (0, 0))).reshape(-1, _SCAN_BLOCK, r)
  upper = jnp.triu(jnp.ones((_SCAN_BLOCK, _SCAN_BLOCK), jnp.float32))
  within = jnp.einsum('ij,bir->bjr', upper, x, precision=jax.lax.Precision.HIGHEST)
  totals = within[:, -1]                                                              # [blocks, R]
  if totals.shape[0] > 1:
    within = within + (_inclusive_counts(totals).astype(jnp.float32) - totals)[:, None]
  return within.reshape(-1, r)[:m].astype(jnp.int32)


def first_k(keys: jax.Array, k: int, threshold: jax.Array) -> jax.Array:
  """Positions [k, R] int32, ascending, of the k smallest `keys` [M, R] of each column, ties to the lowest position.

  `threshold` [R] must lie between them: at most k keys below it and at least k at or below it (the k-th or,
  for the same set, the (k+1)-th smallest value). The keys below it are taken, then the earliest equal to it.
  """
  m, r = keys.shape
  if not k <= m < _EXACT_COUNTS:
    raise ValueError(f'first_k: k = {k} of {m} keys per column; needs k <= M < 2**24')
  below, equal = keys < threshold, keys == threshold
  if (m + 1) ** 2 <= _EXACT_COUNTS // 2:  # both counts in one, below + (M + 1)·equal, with a bit to spare
    counts = _inclusive_counts(below.astype(jnp.float32) + equal.astype(jnp.float32) * (m + 1))
    below_upto, equal_upto = counts % (m + 1), counts // (m + 1)
  else:
    counts = _inclusive_counts(jnp.concatenate([below, equal], axis=1).astype(jnp.float32))
    below_upto, equal_upto = counts[:, :r], counts[:, r:]
  room = k - below_upto[-1]  # [R]: how many equal keys are taken
  taken = below | (equal & (equal_upto <= room))
  slot = jnp.where(taken, below_upto + jnp.minimum(equal_upto, room) - 1, k)  # k: out of range, dropped
  positions = jax.lax.broadcasted_iota(jnp.int32, (m, r), 0)
  return jnp.zeros((k, r), jnp.int32).at[slot, jnp.arange(r)].set(positions, mode='drop')


def _bitonic_partners(length: int) -> list[int]:
  """XOR masks of the stages of a bitonic sort of `length` (a power of two): entry i meets entry i ^ mask.

  Merging runs of `size`: first each entry against its mirror in the other half (mask size − 1), then
  half-cleaners with strides size/4, ..., 1.
  """
  masks, size = [], 2
  while size <= length:
    masks.append(size - 1)
    masks += [1 << j for j in reversed(range(size.bit_length() - 2))]
    size *= 2
  return masks


def sort_by_key(keys: jax.Array, positions: jax.Array) -> jax.Array:
  """`positions` [k, R] reordered down each column by (key, position) ascending; positions distinct per column.

  A bitonic network over the next power of two (sentinels: +inf keys after every position). Each stage is a row
  gather of the partners and one elementwise compare-exchange; the stages run in a loop (fast to compile).
  """
  k, r = keys.shape
  if k == 1:
    return positions
  length = 1 << (k - 1).bit_length()
  keys = jnp.pad(keys, ((0, length - k), (0, 0)), constant_values=jnp.inf)
  sentinels = jnp.max(positions, axis=0) + 1 + jnp.arange(length - k, dtype=positions.dtype)[:, None]
  positions = jnp.concatenate([positions, sentinels], axis=0)
  masks = jnp.asarray(_bitonic_partners(length), jnp.int32)
  row = jnp.arange(length, dtype=jnp.int32)

  def stage(i, state):
    keys, positions = state
    partner = row ^ masks[i]
    other_keys, other_positions = keys[partner], positions[partner]
    lower = (keys < other_keys) | ((keys == other_keys) & (positions < other_positions))
    keep = lower == (row < partner)[:, None]  # the lower row of a pair keeps the lower entry
    return jnp.where(keep, keys, other_keys), jnp.where(keep, positions, other_positions)

  _, positions = jax.lax.fori_loop(0, masks.shape[0], stage, (keys, positions))
  return positions[:k]


def smallest_k(keys: jax.Array, k: int, block: int = 1) -> tuple[jax.Array, jax.Array]:
  """Positions [k, R] of the k smallest `keys` [M, R] of each column in order, and the k-th value [R] (k ≤ M).

  Equal to `lax.top_k(-keys.T, k)[1].T`. With `block` > 1 (dividing M into at least k blocks; see
  `select.block_size`) the candidates
  are first cut to the k blocks of `block` consecutive keys with the smallest minima, in position order: each holds
  a key at least as small, and earlier among equals, as any key of a block left out.
  """
  if block > 1:
    m, r = keys.shape
    minima = jnp.min(keys.reshape(m // block, block, r), axis=1)
    chosen = first_k(minima, k, kth_smallest(minima, k))                                  # ascending block ids
    cand = (chosen[:, None, :] * block + jnp.arange(block)[:, None]).reshape(k * block, r)
    best, kth = smallest_k(jnp.take_along_axis(keys, cand, axis=0), k)
    return jnp.take_along_axis(cand, best, axis=0), kth
  kth = kth_smallest(keys, k)
  members = first_k(keys, k, kth)
  return sort_by_key(jnp.take_along_axis(keys, members, axis=0), members), kth
