"""The errors that are the user's to fix: a bad config, a bad or missing input file, a busy or foreign folder.

The command-line entry points print a `UserError` as one line (and write it to the run's log) without a
traceback; any other exception is a bug and keeps its traceback. Each class also derives from the built-in
exception callers already expect (ValueError, FileNotFoundError, …).
"""


class UserError(Exception):
  """Something the user can fix; the message names the field, file or folder and what was expected."""


class ConfigError(UserError, ValueError):
  """A config field has a value the run cannot use."""


class DataError(UserError, ValueError):
  """A data file or folder is missing or not what the pipeline expects."""


class MissingInputError(UserError, FileNotFoundError):
  """An input the command needs (a checkpoint, an earlier stage's output) does not exist yet."""


class OutputExistsError(UserError, FileExistsError):
  """An output path is taken by something g2sf-jax did not make; it is left untouched."""


class WorkdirBusyError(UserError, RuntimeError):
  """Another run holds the work directory."""


class UnscorableError(UserError, ValueError):
  """A scan cannot be scored honestly (no or too few valid points, a degenerate image)."""


class CorruptOutputError(UserError, ValueError):
  """An output on disk is missing, changed or damaged since it was written: its digest no longer matches."""


class NonFiniteError(UserError, FloatingPointError):
  """A loss, score or map came out NaN or infinite: nothing is written in its place."""


def require_finite(what: str, *values) -> None:
  """Raises NonFiniteError naming `what` if any of `values` (numbers or arrays) is NaN or infinite."""
  import numpy as np  # errors.py is imported everywhere: keep its own import light
  for value in values:
    array = np.asarray(value)
    if not np.all(np.isfinite(array)):
      bad = 'NaN' if np.isnan(array).any() else 'infinite'
      raise NonFiniteError(f'{what} came out {bad}; nothing was written in place of the last good outputs')
