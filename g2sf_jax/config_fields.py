"""Typed checks of config fields, for `experiments.config_check` and each method's `check`.

Each raises `ConfigError` naming the dotted field, its value and what it accepts.
"""
import difflib
import math
import numbers
from typing import Any, Iterable

import ml_collections

from g2sf_jax.errors import ConfigError


def get(config: ml_collections.ConfigDict, field: str) -> Any:
  """The value of a dotted field; a missing one is a ConfigError."""
  value = config
  for part in field.split('.'):
    if not isinstance(value, ml_collections.ConfigDict) or part not in value:
      raise ConfigError(f'config.{field} is missing')
    value = value[part]
  return value


def numbers_list(config: ml_collections.ConfigDict, field: str, length: int | None = None, low: float | None = None,
                 high: float | None = None) -> None:
  """A list or tuple of finite reals (of `length` items), each in [low, high]."""
  value = get(config, field)
  ok = isinstance(value, (list, tuple)) and (length is None or len(value) == length) and len(value) > 0
  ok = ok and all(isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)
                  and (low is None or x >= low) and (high is None or x <= high) for x in value)
  if not ok:
    count = f'{length} ' if length else ''
    bounds = f' in [{low}, {high}]' if low is not None or high is not None else ''
    raise ConfigError(f'config.{field} = {value!r}: expected {count}finite numbers{bounds}')


def boolean(config: ml_collections.ConfigDict, field: str) -> None:
  value = get(config, field)
  if not isinstance(value, bool):
    raise ConfigError(f'config.{field} = {value!r}: expected true or false')


def choice(config: ml_collections.ConfigDict, field: str, choices: Iterable[str]) -> None:
  value, choices = get(config, field), sorted(choices)
  if value not in choices:
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    raise ConfigError(f'config.{field} = {value!r} is not one of {choices}{hint}')


def number(config: ml_collections.ConfigDict, field: str, low: float | None = None, high: float | None = None,
           integer: bool = False, low_open: bool = False, high_open: bool = False) -> None:
  """An int (`integer`) or finite real in [low, high]; `low_open` / `high_open` exclude the bound. NaN and ±inf are
  refused everywhere: no field of g2sf-jax means "unbounded" by inf."""
  value = get(config, field)
  ok = (isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(value, bool)
        and math.isfinite(value))
  if ok and low is not None:
    ok = value > low if low_open else value >= low
  if ok and high is not None:
    ok = value < high if high_open else value <= high
  if not ok:
    lo = '(-inf' if low is None else f'{"(" if low_open else "["}{low}'
    hi = 'inf)' if high is None else f'{high}{")" if high_open else "]"}'
    what = 'an integer' if integer else 'a finite number'
    raise ConfigError(f'config.{field} = {value!r}: expected {what} in {lo}, {hi}')
