"""Where g2sf-jax keeps what it makes once per machine (converted checkpoints, the compilation cache).

`$G2SF_HOME`, else `$XDG_CACHE_HOME/g2sf-jax`, else `~/.cache/g2sf-jax`: never the current directory, so a run
started from another folder finds the same checkpoints and writes nothing into the repository.
"""
import os
from pathlib import Path

VARIABLE = 'G2SF_HOME'


def home() -> Path:
  """The folder (see the module docstring); not created here."""
  if os.environ.get(VARIABLE):
    return Path(os.environ[VARIABLE]).expanduser().absolute()
  cache = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
  return Path(cache).expanduser().absolute() / 'g2sf-jax'


def checkpoint_dir(name: str) -> Path:
  """The default folder of the converted checkpoint `name` (e.g. 'dino_vit_b8'): `home()/checkpoints/<name>`."""
  return home() / 'checkpoints' / name


def compilation_cache_dir() -> Path:
  """JAX's persistent compilation cache, shared by every run and `predict` call on this machine."""
  return home() / 'jax_cache'
