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
