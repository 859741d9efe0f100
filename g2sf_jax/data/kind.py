"""What a dataset kind provides: list a raw class, and turn one raw entry into the arrays `prepare` stores.

A kind (`g2sf_jax/data/{mvtec3d,eyecandies,synthetic}.py`) is plain NumPy code: the TFDS builders in `datasets/`
wrap it to write array_record files, and `predict` calls the same `load_entry` on a user's raw scan, so both see
exactly the same preprocessing (algorithms.md §1.2/§1.3).
"""
import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from g2sf_jax import io

# The splits of a prepared class. `validation` holds good (and possibly defective) scans the detector does not train
# on, for calibration; a class without one gets a seeded part of its training scans (`prepared.prepare`).
SPLITS = ('train', 'validation', 'test')


def parse_modalities(value: str | Sequence[str]) -> tuple[str, ...]:
  """('rgb', 'xyz'), ('rgb',) or ('xyz',) from 'rgb+xyz', 'rgb,xyz', 'xyz', … or a sequence of names."""
  names = value.replace('+', ',').split(',') if isinstance(value, str) else list(value)
  names = [str(m).strip() for m in names if str(m).strip()]
  if not names or not set(names) <= set(io.MODALITIES) or len(set(names)) != len(names):
    raise ValueError(f"modalities must be 'rgb+xyz', 'rgb' or 'xyz', got {value!r}")
  return tuple(m for m in io.MODALITIES if m in names)


@dataclasses.dataclass(frozen=True)
class Stored:
  """One preprocessed sample at stored resolution S: what `prepare` writes and `predict` scores.

  rgb uint8 [S,S,3] or None (no images), xyz float32 [S,S,3] or None (no point clouds), xyz_orig float32 [S,S,3] or None
  (the input cloud with only the square padding, kept for anomaly synthesis, algorithms.md §4.2), mask uint8 [S,S] (0 =
  good), has_mask: False for a defective scan without ground truth (its mask is then all zero and says nothing),
  problems: what preparation worked around, as 'kind: detail'.
  """
  rgb: np.ndarray | None
  xyz: np.ndarray | None
  xyz_orig: np.ndarray | None
  mask: np.ndarray
  problems: tuple[str, ...] = ()
  raw_size: tuple[int, int] | None = None  # (H, W) of the raw files before any padding; None = the stored size
  raw_rgb: np.ndarray | None = None  # uint8 [H, W, 3]: the image as read, before masking and padding (for display)
  has_mask: bool = True

  def arrays(self) -> dict[str, np.ndarray]:
    """The stored schema (`prepared.tfds_features`): an absent array is [0, 0, 3]."""
    empty = {'rgb': np.zeros((0, 0, 3), np.uint8), 'xyz': np.zeros((0, 0, 3), np.float32)}
    pick = lambda x, kind: empty[kind] if x is None else x
    side = self.mask.shape[0]
    height, width = self.raw_size or (side, side)
    return dict(rgb=pick(self.rgb, 'rgb'), xyz=pick(self.xyz, 'xyz'), xyz_orig=pick(self.xyz_orig, 'xyz'),
                mask=self.mask, has_mask=int(self.has_mask), raw_height=int(height), raw_width=int(width))

  def sample(self) -> dict[str, np.ndarray]:
    """`{rgb, xyz, mask}` with only the modalities present: the input of `transforms.model_input`."""
    out = {'mask': self.mask}
    if self.rgb is not None:
      out['rgb'] = self.rgb
    if self.xyz is not None:
      out['xyz'] = self.xyz
    return out


@dataclasses.dataclass(frozen=True)
class Listing:
  """A raw class: its modalities, its entries per split in algorithms.md §1.1 order, and problems found while listing.

  Each entry has `.name` ('<split>/<defect>/<id>') and `.defect`; what else it holds is the kind's business.
  """
  modalities: tuple[str, ...]
  splits: dict[str, list[Any]]
  problems: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class DatasetKind:
  """One dataset kind.

  list_class(class_dir) → Listing; load_entry(entry, keep_orig, max_pixels, clean) → Stored (reads the raw files,
  refusing any that declares more than `max_pixels` pixels, and applies the kind's preprocessing: with `clean`, the
  MVTec 3D-AD cleaning of the cloud, else only the square padding; `keep_orig` keeps `xyz_orig`). For
  new scans: scan_entry(**files) → an entry from the user's raw files (`scan_files` names the keywords, e.g. ('rgb',
  'xyz') or ('sample',)); scan_folder(folder) → the entries of a folder of raw scans; preprocess_arrays(rgb, xyz,
  clean) → Stored, the same preprocessing on arrays already read. mask_rgb_by_xyz: algorithms.md §1.4's Eyecandies RGB
  masking; synthesis: which anomaly-synthesis rules apply (algorithms.md §4.2: 'mvtec', or 'eyecandies' for the rules
  marked E). open_classes: any class folder found in the raw data is a class (`classes` are then only the usual
  ones); otherwise only `classes` exist.
  """
  name: str
  classes: tuple[str, ...]
  list_class: Callable[[Path], Listing]
  load_entry: Callable[[Any, bool, int, bool], Stored]
  scan_files: tuple[str, ...]
  scan_entry: Callable[..., Any]
  scan_folder: Callable[[Path], list[Any]]
  preprocess_arrays: Callable[[np.ndarray | None, np.ndarray | None, bool], Stored]
  mask_rgb_by_xyz: bool = False
  synthesis: str = 'mvtec'
  open_classes: bool = False
