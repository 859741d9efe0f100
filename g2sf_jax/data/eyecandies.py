"""Eyecandies as a dataset kind: list the raw layout, read a sample's 17 files, convert it to a cloud (algorithms.md
§1.3).

Raw layout: `<Class>/train/data/` and `<Class>/test_public/data/`, files `<id>_<suffix>` (depth.png, image_4.png,
info_depth.yaml, pose.txt, mask.png, ...). All 10 classes are processed (the reference skipped four). Test samples
are `bad` iff their mask has a non-zero pixel, and `bad` comes before `good` (algorithms.md §1.1 order). Only read.
"""
import dataclasses
from pathlib import Path

import numpy as np
import yaml

from g2sf_jax import io
from g2sf_jax.data import kind, preprocessing
from g2sf_jax.io import DataError

CLASSES = ('CandyCane', 'ChocolateCookie', 'ChocolatePraline', 'Confetto', 'GummyBear', 'HazelnutTruffle',
           'LicoriceSandwich', 'Lollipop', 'Marshmallow', 'PeppermintCandy')
FILES_PER_SAMPLE = 17


@dataclasses.dataclass(frozen=True)
class Entry:
  folder: Path
  sample_id: str      # as in the download (zfill(3) for train, zfill(2) for test)
  name: str           # '<split>/<defect>/<zfill(3) id>'
  defect: str = 'good'
  mask: Path | None = None   # test samples only

  def path(self, suffix: str) -> Path:
    return self.folder / f'{self.sample_id}_{suffix}'


def scan_entry(sample: str | Path) -> Entry:
  """A new scan from its raw files: `sample` is the path prefix of `<sample>_depth.png`, `<sample>_image_4.png`,
  `<sample>_info_depth.yaml` and `<sample>_pose.txt` (e.g. `…/test_public/data/07`)."""
  prefix = Path(sample)
  if not prefix.parent.is_dir():
    raise DataError(f'{prefix.parent}: folder not found (expected an Eyecandies data folder)')
  return Entry(prefix.parent, prefix.name, f'scan/{prefix.name}', defect='scan')


def scan_folder(folder: Path) -> list[Entry]:
  """Every sample of an Eyecandies `data/` folder (by the numeric id prefix of its files)."""
  return [dataclasses.replace(e, name=f'{Path(folder).name}/{e.sample_id}', defect='scan')
          for e in _list_samples(Path(folder))]


def preprocess_arrays(rgb: np.ndarray | None, xyz: np.ndarray | None, clean: bool = True) -> kind.Stored:
  """Arrays of an already converted scan (algorithms.md §1.3 makes the cloud from depth and pose; use `scan_entry` for
  the raw files): stored as they are, the RGB masking happens in the load transforms."""
  size = (xyz if xyz is not None else rgb).shape[:2]
  return kind.Stored(rgb, xyz, None, np.zeros(size, np.uint8), raw_rgb=rgb)


def _list_samples(folder: Path) -> list[Entry]:
  """The samples of a `data/` folder, by the numeric id prefix of their files.

  The reference counts `len(files) // 17`; counting ids gives the same samples on a complete download and does not
  silently drop the last sample when one file (e.g. a mask) is missing.
  """
  if not folder.is_dir():
    raise DataError(f'{folder}: folder not found (expected the Eyecandies layout <Class>/train/data and '
                    '<Class>/test_public/data)')
  ids = sorted({p.name.split('_', 1)[0] for p in folder.iterdir() if p.name.split('_', 1)[0].isdigit()}, key=int)
  if not ids:
    raise DataError(f'{folder}: no samples (expected {FILES_PER_SAMPLE} files per sample, e.g. 000_depth.png)')
  return [Entry(folder, i, f'{int(i):03d}') for i in ids]


def _list_split(class_dir: Path, split: str) -> list[Entry]:
  folder = class_dir / ('train' if split == 'train' else 'test_public') / 'data'
  prefix = 'train/good' if split == 'train' else 'test/?'
  return [dataclasses.replace(e, name=f'{prefix}/{e.name}') for e in _list_samples(folder)]


def list_class(class_dir: Path) -> kind.Listing:
  """Both splits in algorithms.md §1.1 order; a test sample without a mask is left out and listed as a problem."""
  problems = []
  test = []
  for entry in _list_split(class_dir, 'test'):
    mask_path = entry.path('mask.png')
    if not mask_path.is_file():
      problem = preprocessing.Problem('missing_mask', f'{mask_path} not found; sample left out (its label is unknown)')
      problems.append(f'{entry.name}: {problem}')
      continue
    defect = 'bad' if io.read_mask_png(mask_path).any() else 'good'
    test.append(dataclasses.replace(entry, name=f'test/{defect}/{int(entry.sample_id):03d}', defect=defect,
                                    mask=mask_path))
  return kind.Listing(io.MODALITIES, {'train': _list_split(class_dir, 'train'),
                                      'test': sorted(test, key=lambda e: e.name)}, tuple(problems))


def read_depth_range(path: Path) -> tuple[float, float]:
  """`normalization.min/max` of an `info_depth.yaml`."""
  if not path.is_file():
    raise DataError(f'{path}: file not found (expected info_depth.yaml with normalization.min/max)')
  try:
    info = yaml.safe_load(path.read_text())
    return float(info['normalization']['min']), float(info['normalization']['max'])
  except Exception as e:
    raise DataError(f'{path}: cannot read normalization.min/max: {e}') from e


def read_pose(path: Path) -> np.ndarray:
  if not path.is_file():
    raise DataError(f'{path}: file not found (expected a 4x4 camera pose)')
  try:
    pose = np.loadtxt(path)
  except Exception as e:
    raise DataError(f'{path}: cannot parse the camera pose: {e}') from e
  if pose.shape != (4, 4):
    raise DataError(f'{path}: pose of shape {pose.shape}, expected 4x4')
  if not np.isfinite(pose).all() or abs(np.linalg.det(pose)) < 1e-12:
    raise DataError(f'{path}: the camera pose is not an invertible 4x4 matrix (algorithms.md §1.3 inverts it)')
  return pose


def load_entry(entry: Entry, keep_orig: bool = False, max_pixels: int = io.MAX_PIXELS,
               clean: bool = True) -> kind.Stored:
  """Reads one raw sample and converts it (algorithms.md §1.3; the table removal is part of the conversion, so
  `clean` changes nothing). Eyecandies keeps no `xyz_orig` (its full cloud is `xyz`)."""
  depth = io.read_depth_png16(entry.path('depth.png'), max_pixels)
  rgb = io.read_rgb_png(entry.path('image_4.png'), max_pixels)
  if rgb.shape[:2] != depth.shape:
    raise DataError(f'{entry.path("image_4.png")}: image size {rgb.shape[:2]} differs from its depth map '
                    f'{entry.path("depth.png")} {depth.shape}')
  depth_min, depth_max = read_depth_range(entry.path('info_depth.yaml'))
  xyz, problems = preprocessing.preprocess_eyecandies(depth, depth_min, depth_max, read_pose(entry.path('pose.txt')))
  mask = io.read_mask_png(entry.mask, max_pixels) if entry.mask is not None else np.zeros(xyz.shape[:2], np.uint8)
  if mask.shape != xyz.shape[:2]:
    raise DataError(f'{entry.mask}: mask size {mask.shape} differs from the depth map {xyz.shape[:2]}')
  return kind.Stored(rgb, xyz, None, mask, tuple(str(p) for p in problems), raw_rgb=rgb)


KIND = kind.DatasetKind('eyecandies', CLASSES, list_class, load_entry, ('sample',), scan_entry, scan_folder,
                        preprocess_arrays, mask_rgb_by_xyz=True, synthesis='eyecandies')
