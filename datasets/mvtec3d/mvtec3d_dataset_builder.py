"""MVTec 3D-AD as TFDS array_record, one builder config per class, reference preprocessing applied (SPEC §1.2).

Reads the user's extracted download from the manual directory, read only. Splits: `train` (all good, with the
un-preprocessed padded cloud `xyz_orig` for anomaly synthesis) and `test` (SPEC §1.1 order). `validation` is not
used by G²SF and is not prepared. Load through `g2sf_jax.data` (this folder is not an importable package).
"""
import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from g2sf_jax import data, io, preprocessing
from g2sf_jax.io import DataError

RANSAC_SEED = 0  # The reference leaves Open3D's RANSAC unseeded; one fixed seed makes preparation reproducible.


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str           # '<split>/<defect>/<stem>'
  defect: str
  rgb: Path
  xyz: Path
  gt: Path | None     # None for good samples: their mask is all zero (SPEC §1.1)


def _files(folder: Path, suffix: str) -> dict[str, Path]:
  return {p.stem: p for p in sorted(folder.glob(f'*{suffix}'))} if folder.is_dir() else {}


def list_split(class_dir: Path, split: str) -> list[Entry]:
  """SPEC §1.1: defect folders sorted, files sorted; rgb, xyz (and gt) must hold the same sample stems."""
  split_dir = class_dir / split
  if not split_dir.is_dir():
    raise DataError(f'{split_dir}: folder not found (expected the MVTec 3D-AD layout '
                    f'<class>/{split}/<defect>/{{rgb,xyz,gt}})')
  defects = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
  if not defects:
    raise DataError(f'{split_dir}: empty folder (expected defect folders such as good/)')
  entries = []
  for defect in defects:
    folder = split_dir / defect
    rgb, xyz = _files(folder / 'rgb', '.png'), _files(folder / 'xyz', '.tiff')
    if not rgb and not xyz:
      raise DataError(f'{folder}: no samples (expected rgb/*.png and xyz/*.tiff)')
    gt = _files(folder / 'gt', '.png') if defect != 'good' else None
    for stem in sorted(rgb.keys() | xyz.keys()):
      if stem not in rgb:
        raise DataError(f'{folder / "rgb" / (stem + ".png")}: missing (its point cloud {xyz[stem]} exists)')
      if stem not in xyz:
        raise DataError(f'{folder / "xyz" / (stem + ".tiff")}: missing (its image {rgb[stem]} exists)')
      if gt is not None and stem not in gt:
        raise DataError(f'{folder / "gt" / (stem + ".png")}: missing ground truth for the defect sample {rgb[stem]}')
      entries.append(Entry(f'{split}/{defect}/{stem}', defect, rgb[stem], xyz[stem],
                           gt[stem] if gt is not None else None))
  return entries


def read_entry(entry: Entry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(xyz float32 [H,W,3], rgb uint8 [H,W,3], mask uint8 [H,W]) with matching sizes, or a DataError."""
  xyz, rgb = io.read_xyz_tiff(entry.xyz), io.read_rgb_png(entry.rgb)
  if rgb.shape[:2] != xyz.shape[:2]:
    raise DataError(f'{entry.rgb}: image size {rgb.shape[:2]} differs from its point cloud {entry.xyz} '
                    f'{xyz.shape[:2]}')
  if entry.gt is None:
    return xyz, rgb, np.zeros(xyz.shape[:2], np.uint8)
  mask = io.read_mask_png(entry.gt)
  if mask.shape != xyz.shape[:2]:
    raise DataError(f'{entry.gt}: mask size {mask.shape} differs from its point cloud {entry.xyz} {xyz.shape[:2]}')
  return xyz, rgb, mask


class Builder(tfds.core.GeneratorBasedBuilder):
  """MVTec 3D-AD, preprocessed once (plane removal, square padding, largest cluster)."""

  name = 'mvtec3d'
  VERSION = tfds.core.Version(data.VERSION)
  RELEASE_NOTES = {data.VERSION: 'SPEC §1.2 preprocessing; train stores xyz_orig.'}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=c) for c in data.CLASSES['mvtec3d']]
  MANUAL_DOWNLOAD_INSTRUCTIONS = ('Extract mvtec_3d_anomaly_detection.tar.xz and pass the folder that holds '
                                  'bagel/, cable_gland/, ... as the manual directory (raw_dir).')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=__doc__, features=data.tfds_features(),
                                 disable_shuffling=True, metadata=tfds.core.MetadataDict(problems=[]))

  def _split_generators(self, dl_manager):
    class_dir = Path(dl_manager.manual_dir) / self.builder_config.name
    return {split: self._generate_examples(class_dir, split) for split in data.SPLITS}

  def _generate_examples(self, class_dir: Path, split: str):
    empty = np.zeros((0, 0, 3), np.float32)
    for entry in list_split(class_dir, split):
      xyz, rgb, mask = read_entry(entry)
      sample = preprocessing.preprocess_mvtec(xyz, rgb, mask, seed=RANSAC_SEED)
      problems = [str(p) for p in sample.problems]
      self.info.metadata['problems'].extend(f'{entry.name}: {p}' for p in problems)
      yield entry.name, {
          'rgb': sample.rgb, 'xyz': sample.xyz, 'mask': sample.mask,
          'xyz_orig': sample.xyz_orig if split == 'train' else empty,
          'label': int(entry.defect != 'good'), 'defect': entry.defect, 'name': entry.name, 'problems': problems,
      }
