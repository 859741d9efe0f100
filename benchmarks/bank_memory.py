"""Full-size memory-bank benchmark: normalisation + projection + greedy coreset on one MVTec-sized PCD bank.

Builds a random `[rows, dim]` float32 bank in place (default 765,184 × 1152 = 3.5 GB, bagel's PCD bank, algorithms.md
§3.2), then times each phase of `memory_bank.build` and prints the peak RSS. The greedy loop at full size is hours on a
small CPU, so `--iterations N` runs N of the k−1 iterations over the full bank and extrapolates linearly (each iteration
costs the same: one pass over the projected bank).

  python -m benchmarks.bank_memory                                 # everything, full size
  python -m benchmarks.bank_memory --iterations 200                # full n, 200 greedy iterations, extrapolated
  python -m benchmarks.bank_memory --rows 50000 --iterations 100   # quick check
"""
import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from g2sf_jax import distributed
from g2sf_jax import memory_bank as mb


def greedy_seconds_per_iteration(z, dist0, iterations: int, fp16: bool, mesh, mode: str = 'reference'):
  """(seconds per greedy iteration, the picks) over `iterations`, timed in the steady loop: from the end of the
  first device call to the end of the last (`greedy_k_center`'s progress calls), so the set-up (host copy, padding,
  placement) and the first call are left out. With a single call (few iterations) its whole time is used."""
  marks = []
  start = time.perf_counter()
  idx = mb.greedy_k_center(z, dist0, k=iterations + 1, fp16=fp16, mesh=mesh, mode=mode,
                           progress=lambda done, _: marks.append((time.perf_counter(), done)))
  (t0, d0), (t1, d1) = marks[0], marks[-1]
  return ((t1 - t0) / (d1 - d0) if d1 > d0 else (t1 - start) / iterations), np.asarray(idx)


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--rows', type=int, default=765_184)
  parser.add_argument('--dim', type=int, default=1152)
  parser.add_argument('--fraction', type=float, default=0.1)
  parser.add_argument('--iterations', type=int, default=0, help='greedy iterations to run (0 = all k-1)')
  parser.add_argument('--fp32', action='store_true', help='float32 greedy distances instead of the reference fp16')
  parser.add_argument('--chunk_rows', type=int, default=16384)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()

  timings = {}

  def phase(name, fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    timings[name] = time.perf_counter() - start
    print(f'{name:>22s}: {timings[name]:9.1f} s   peak RSS {_peak_rss_gb():6.2f} GiB', flush=True)
    return out

  print(f'bank {args.rows} x {args.dim} float32 = {args.rows * args.dim * 4 / 2 ** 30:.2f} GiB; '
        f'devices {jax.devices()}', flush=True)

  def fill():
    bank = np.empty((args.rows, args.dim), np.float32)
    rng = np.random.default_rng(args.seed)
    for start in range(0, args.rows, args.chunk_rows):
      rng.standard_normal(dtype=np.float32, out=bank[start:start + args.chunk_rows])
    return bank

  bank = phase('fill bank', fill)
  normaliser = phase('normaliser (2 passes)', lambda: mb.Normaliser.fit(bank, args.chunk_rows))
  print(f'  mean {normaliser.mean:.6f} std {normaliser.std:.6f}')
  fp16 = not args.fp32
  n_comp = mb.projection_dim(args.rows, 0.9)
  matrix = mb.sparse_projection_matrix(jax.random.key(args.seed), args.dim, n_comp)
  z, dist0 = phase(f'project -> {n_comp} dims', lambda: mb.project(
      bank, matrix, normaliser, np.float16 if fp16 else np.float32, args.chunk_rows))
  z_dev = phase('to device', lambda: (jnp.asarray(z), jnp.asarray(dist0)))
  z = None  # the host copy is no longer needed
  k = mb.coreset_size(args.rows, args.fraction)
  iters = min(args.iterations or k - 1, k - 1)
  mesh = distributed.make_mesh()
  phase('greedy compile', lambda: mb.greedy_k_center(*z_dev, k=2, fp16=fp16, mesh=mesh))
  per_iter, idx = phase(f'greedy {iters} iters', lambda: greedy_seconds_per_iteration(*z_dev, iters, fp16, mesh))
  assert len(set(idx.tolist())) == iters + 1, 'greedy picked a row twice'
  rows = phase('gather coreset rows', lambda: mb.gather_rows(bank, np.asarray(idx), normaliser))
  print(f'coreset k = {k} ({rows.shape[0]} rows gathered); greedy {per_iter * 1e3:.1f} ms/iteration '
        f'({"fp16" if fp16 else "fp32"})')
  if iters < k - 1:
    print(f'extrapolated full greedy loop ({k - 1} iterations): {per_iter * (k - 1) / 3600:.2f} h')
  print(f'peak RSS {_peak_rss_gb():.2f} GiB')
  _against_the_floor(z_dev, iters, per_iter, fp16, mesh, idx)


# A bank slice of whole greedy tiles this large stays in a server CPU's last-level cache: if the greedy costs as
# much per row there as over the whole bank, its loop is bound by arithmetic, not by memory bandwidth.
CACHE_SLICE_BYTES = 12 * 2 ** 20


def _against_the_floor(z_dev, iters: int, per_iter: float, fp16: bool, mesh, idx) -> None:
  """Each greedy iteration reads the whole projected bank once, so one read pass at this machine's memory
  bandwidth is its floor: measured here on the same bank as the fastest of NumPy's vectorised reductions over its
  bytes (an int16 max, a uint64 sum; 5 tries each), then the reference-arithmetic loop and the `fast` mode as
  multiples of it, the cost per row with the bank in cache (what bounds the loop), and how many picks the fast
  mode keeps."""
  flat = np.asarray(z_dev[0]).reshape(-1).view(np.uint8)
  flat = flat[:flat.size - flat.size % 8]
  passes = []
  for reduce in (lambda: flat.view(np.int16).max(), lambda: flat.view(np.uint64).sum()):
    for _ in range(5):
      start = time.perf_counter()
      reduce()
      passes.append(time.perf_counter() - start)
  floor = min(passes)
  print(f'memory floor: one read pass over the projected bank ({flat.nbytes / 1e6:.0f} MB) {floor * 1e3:.1f} ms '
        f'= {flat.nbytes / floor / 1e9:.1f} GB/s')
  print(f'greedy reference mode: {per_iter / floor:.2f}x the floor')
  rows = z_dev[0].shape[0]
  row_bytes = z_dev[0].shape[1] * z_dev[0].dtype.itemsize
  cached = min(rows, max(mb.GREEDY_TILE, CACHE_SLICE_BYTES // row_bytes // mb.GREEDY_TILE * mb.GREEDY_TILE))
  in_cache, _ = greedy_seconds_per_iteration(z_dev[0][:cached], z_dev[1][:cached], min(400, cached - 1), fp16,
                                             mesh)
  print(f'greedy per row: {per_iter / rows * 1e9:.1f} ns over the whole bank, {in_cache / cached * 1e9:.1f} ns over '
        f'its first {cached} rows (cache-resident), floor {floor / rows * 1e9:.1f} ns')
  mb.greedy_k_center(*z_dev, k=2, fp16=fp16, mesh=mesh, mode='fast')
  fast, fast_idx = greedy_seconds_per_iteration(*z_dev, iters, fp16, mesh, mode='fast')
  same = int(np.cumprod(np.asarray(fast_idx) == np.asarray(idx)).sum())
  print(f'greedy fast mode: {fast * 1e3:.1f} ms/iteration = {fast / floor:.2f}x the floor; its first {same} of '
        f'{iters + 1} picks equal the reference mode\'s')


if __name__ == '__main__':
  main()
