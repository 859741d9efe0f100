"""Packages that only some stages need, imported on first use: without them the other stages still run (e.g. an
accelerator image without open3d runs every stage of a method whose point backbone is not FPFH)."""
import importlib
from types import ModuleType


def open3d(needed_for: str) -> ModuleType:
  """The `open3d` module, or an ImportError that says which stage needs it and how to install it."""
  try:
    return importlib.import_module('open3d')
  except ImportError as e:
    raise ImportError(f'{needed_for} needs open3d (setup.cfg pins open3d==0.20.0, which on Debian also needs '
                      f'libusb-1.0-0; `bash scripts/install.sh` installs both): {e}') from e
