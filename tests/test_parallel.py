"""Worker pools: results in input order, the same as in-process, and a worker's error raised at its item."""
import math

import pytest

from g2sf_jax import parallel


@pytest.mark.parametrize('count', [1, 2])
def test_map_keeps_order_and_streams(count):
  items = list(range(40, 0, -1))  # more items than the 2 × count in flight
  with parallel.Workers(count) as pool:
    assert list(pool.map(math.factorial, items)) == [math.factorial(i) for i in items]
    assert list(pool.map(math.factorial, [])) == []


def test_a_workers_error_is_raised_with_its_message():
  with parallel.Workers(2) as pool:
    results = pool.map(int, ['1', '2', 'three', '4'])
    assert next(results) == 1 and next(results) == 2
    with pytest.raises(ValueError, match="invalid literal for int.*'three'"):
      next(results)


def test_resolve():
  assert parallel.resolve(0) == parallel.available_cpus() >= 1
  assert parallel.resolve(3) == 3
  with pytest.raises(ValueError, match='workers must be >= 0'):
    parallel.resolve(-1)
