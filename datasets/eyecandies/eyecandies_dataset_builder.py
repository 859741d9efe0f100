"""Eyecandies as TFDS array_record, one builder config per class, converted to point clouds (SPEC §1.3).

Reads the user's extracted download (`<Class>/train/data`, `<Class>/test_public/data`, 17 files per sample) from
the manual directory, read only. All 10 classes are processed (the reference skipped four). Splits: `train` (all
good) and `test` (`bad` before `good`, SPEC §1.1 order; a sample is `bad` iff its mask has a non-zero pixel).
Load through `g2sf_jax.data` (this folder is not an importable package).
"""
import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
import yaml

from g2sf_jax import data, io, preprocessing
from g2sf_jax.io import DataError

FILES_PER_SAMPLE = 17


@dataclasses.dataclass(frozen=True)
class Entry:
  folder: Path
  sample_id: str      # as in the download (zfill(3) for train, zfill(2) for test)
  name: str           # '<split>/<defect>/<zfill(3) id>'; the test defect ('bad'/'good') is known from the mask

  def path(self, suffix: str) -> Path:
    return self.folder / f'{self.sample_id}_{suffix}'


def list_split(class_dir: Path, split: str) -> list[Entry]:
  """The samples of `train/data` or `test_public/data`, by the numeric id prefix of their files.

  The reference counts `len(files) // 17`; counting ids gives the same samples on a complete download and does not
  silently drop the last sample when one file (e.g. a mask) is missing.
  """
  folder = class_dir / ('train' if split == 'train' else 'test_public') / 'data'
  if not folder.is_dir():
    raise DataError(f'{folder}: folder not found (expected the Eyecandies layout <Class>/train/data and '
                    '<Class>/test_public/data)')
  ids = sorted({p.name.split('_', 1)[0] for p in folder.iterdir() if p.name.split('_', 1)[0].isdigit()}, key=int)
  if not ids:
    raise DataError(f'{folder}: no samples (expected {FILES_PER_SAMPLE} files per sample, e.g. 000_depth.png)')
  return [Entry(folder, i, f'train/good/{int(i):03d}' if split == 'train' else f'test/?/{int(i):03d}')
          for i in ids]


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
  return pose


def convert(entry: Entry) -> tuple[np.ndarray, np.ndarray, tuple[preprocessing.Problem, ...]]:
  """(xyz float32 [H,W,3], rgb uint8 [H,W,3], problems) of one sample (SPEC §1.3)."""
  depth = io.read_depth_png16(entry.path('depth.png'))
  rgb = io.read_rgb_png(entry.path('image_4.png'))
  if rgb.shape[:2] != depth.shape:
    raise DataError(f'{entry.path("image_4.png")}: image size {rgb.shape[:2]} differs from its depth map '
                    f'{entry.path("depth.png")} {depth.shape}')
  depth_min, depth_max = read_depth_range(entry.path('info_depth.yaml'))
  xyz, problems = preprocessing.preprocess_eyecandies(depth, depth_min, depth_max, read_pose(entry.path('pose.txt')))
  return xyz, rgb, problems


class Builder(tfds.core.GeneratorBasedBuilder):
  """Eyecandies: depth + pose -> organised cloud with the table removed (SPEC §1.3)."""

  name = 'eyecandies'
  VERSION = tfds.core.Version(data.VERSION)
  RELEASE_NOTES = {data.VERSION: 'SPEC §1.3 conversion, all 10 classes.'}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=c) for c in data.CLASSES['eyecandies']]
  MANUAL_DOWNLOAD_INSTRUCTIONS = ('Extract the Eyecandies class archives and pass the folder that holds '
                                  'CandyCane/, ChocolateCookie/, ... as the manual directory (raw_dir).')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=__doc__, features=data.tfds_features(),
                                 disable_shuffling=True, metadata=tfds.core.MetadataDict(problems=[]))

  def _split_generators(self, dl_manager):
    class_dir = Path(dl_manager.manual_dir) / self.builder_config.name
    return {split: self._generate_examples(class_dir, split) for split in data.SPLITS}

  def _record(self, name: str, problems) -> list[str]:
    problems = [str(p) for p in problems]
    self.info.metadata['problems'].extend(f'{name}: {p}' for p in problems)
    return problems

  def _generate_examples(self, class_dir: Path, split: str):
    empty = np.zeros((0, 0, 3), np.float32)
    entries = list_split(class_dir, split)
    masks = {}
    if split == 'test':  # The mask decides good/bad, and the order is by folder: read the masks first.
      labelled = []
      for entry in entries:
        mask_path = entry.path('mask.png')
        if not mask_path.is_file():
          self._record(entry.name, [preprocessing.Problem(
              'missing_mask', f'{mask_path} not found; sample left out (its label is unknown)')])
          continue
        mask = io.read_mask_png(mask_path)
        defect = 'bad' if mask.any() else 'good'
        name = f'test/{defect}/{int(entry.sample_id):03d}'
        masks[name] = mask
        labelled.append(dataclasses.replace(entry, name=name))
      entries = sorted(labelled, key=lambda e: e.name)
    for entry in entries:
      xyz, rgb, problems = convert(entry)
      mask = masks.get(entry.name, np.zeros(xyz.shape[:2], np.uint8))
      if mask.shape != xyz.shape[:2]:
        raise DataError(f'{entry.path("mask.png")}: mask size {mask.shape} differs from the depth map '
                        f'{xyz.shape[:2]}')
      defect = entry.name.split('/')[1]
      yield entry.name, {
          'rgb': rgb, 'xyz': xyz, 'xyz_orig': empty, 'mask': mask, 'label': int(defect != 'good'),
          'defect': defect, 'name': entry.name, 'problems': self._record(entry.name, problems),
      }
