"""The one timing rule every benchmark here shares: a first call (JAX compiles there), then the median of more."""
import statistics
import time
from typing import Any, Callable


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
  """(first call, median of `repeats` further calls) in seconds; the first call is the warm-up/compile."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)
