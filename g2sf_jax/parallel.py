"""Ordered maps over worker processes, for the CPU-bound data work around the accelerator.

Rendering the synthetic set, the algorithms.md §1.2 cleaning in `prepare` and the anomaly synthesis of G²SF's
`fusion_data` are plain NumPy/OpenCV work on one sample at a time, mostly in Python loops that hold the GIL: on a GPU
machine they, not the backbones, set the pace of a class. Every item is a pure function of its arguments (each sample is
seeded by itself), so the results are the same for any number of workers, and a config's `workers` keys no stage.

Workers are spawned (not forked: the parent has started JAX's threads) and each limits its BLAS/OpenMP pools to one
thread, so `n` workers use `n` cores. As with any spawned pool, a script that asks for more than one worker needs
the `if __name__ == '__main__':` guard (the workers import the main module); `python -m experiments.run` has it.
"""
import collections
import concurrent.futures as futures
import multiprocessing
import os
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar('T')
R = TypeVar('R')


def available_cpus() -> int:
  """The CPU cores this process may run on (its affinity mask, e.g. a SLURM allocation's, not the machine's)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def resolve(workers: int) -> int:
  """A config's `workers`: 0 = one per available core, otherwise that many (1 = in this process)."""
  if workers < 0:
    raise ValueError(f'workers must be >= 0 (0 = one per CPU core), got {workers}')
  return workers or available_cpus()


def _limit_threads() -> None:
  import threadpoolctl
  threadpoolctl.threadpool_limits(1)


class Workers:
  """A pool of `count` worker processes for the duration of a `with` block; `count` ≤ 1 runs in this process.

  `map(fn, items)` yields `fn(item)` in the order of `items`, with at most `2 × count` items in flight, so results
  stream instead of piling up; `fn` and the items must be picklable (module-level functions, plain data). An
  exception in a worker is raised here, at its item, with the worker's message.
  """

  def __init__(self, count: int):
    self.count = count
    self._pool: futures.ProcessPoolExecutor | None = None

  def __enter__(self) -> 'Workers':
    if self.count > 1:
      self._pool = futures.ProcessPoolExecutor(self.count, mp_context=multiprocessing.get_context('spawn'),
                                               initializer=_limit_threads)
    return self

  def __exit__(self, *exc) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)
      self._pool = None

  def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    if self._pool is None:
      yield from map(fn, items)
      return
    pending: collections.deque = collections.deque()
    try:
      for item in items:
        pending.append(self._pool.submit(fn, item))
        if len(pending) >= 2 * self.count:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
    finally:
      for f in pending:
        f.cancel()
