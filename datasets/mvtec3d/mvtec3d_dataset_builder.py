"""MVTec 3D-AD as TFDS array_record, one builder config per class, reference preprocessing applied (SPEC §1.2).

Reads the user's extracted download from the manual directory, read only. Splits: `train` (all good, with the
un-preprocessed padded cloud `xyz_orig` for anomaly synthesis) and `test` (SPEC §1.1 order). `validation` is not
used by G²SF and is not prepared. Load through `g2sf_jax.data` (this folder is not an importable package).

A class may also hold one modality only: no `xyz/` folders (an RGB inspection set: images stored padded, nothing
else to preprocess) or no `rgb/` folders (3D scans: SPEC §1.2 on the clouds). The missing modality is stored empty
and the class's modalities are recorded in `metadata.json` (`g2sf_jax.data.available_modalities`).
"""
import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from g2sf_jax import data, io, preprocessing
from g2sf_jax.io import DataError

RANSAC_SEED = 0  # The reference leaves Open3D's RANSAC unseeded; one fixed seed makes preparation reproducible.
_SUBFOLDERS = {'rgb': ('rgb', '.png', 'image'), 'xyz': ('xyz', '.tiff', 'point cloud')}


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str           # '<split>/<defect>/<stem>'
  defect: str
  rgb: Path | None    # None in a class without images
  xyz: Path | None    # None in a class without point clouds
  gt: Path | None     # None for good samples: their mask is all zero (SPEC §1.1)


def _files(folder: Path, suffix: str) -> dict[str, Path]:
  return {p.stem: p for p in sorted(folder.glob(f'*{suffix}'))} if folder.is_dir() else {}


def _describe(modalities: tuple[str, ...]) -> str:
  return ' and '.join(f'{m}/*{_SUBFOLDERS[m][1]}' for m in modalities)


def _list_folder(folder: Path, split: str) -> tuple[tuple[str, ...], list[Entry]]:
  """The modalities one defect folder holds (those with files) and its samples; stems must match across them."""
  files = {m: _files(folder / sub, suffix) for m, (sub, suffix, _) in _SUBFOLDERS.items()}
  modalities = tuple(m for m in io.MODALITIES if files[m])
  if not modalities:
    raise DataError(f'{folder}: no samples (expected rgb/*.png and/or xyz/*.tiff)')
  gt = _files(folder / 'gt', '.png') if folder.name != 'good' else None
  entries = []
  for stem in sorted(set().union(*(files[m].keys() for m in modalities))):
    for m in modalities:
      if stem not in files[m]:
        sub, suffix, what = _SUBFOLDERS[m]
        other = next(files[o][stem] for o in modalities if stem in files[o])
        raise DataError(f'{folder / sub / (stem + suffix)}: missing {what} (the sample exists as {other}; every '
                        'sample of a folder needs the same modalities)')
    paths = {m: files[m].get(stem) for m in io.MODALITIES}
    if gt is not None and stem not in gt:
      raise DataError(f'{folder / "gt" / (stem + ".png")}: missing ground truth for the defect sample '
                      f'{paths[modalities[0]]}')
    entries.append(Entry(f'{split}/{folder.name}/{stem}', folder.name, paths['rgb'], paths['xyz'],
                         gt[stem] if gt is not None else None))
  return modalities, entries


def list_class(class_dir: Path) -> tuple[tuple[str, ...], dict[str, list[Entry]]]:
  """(the class's modalities, {split: entries in SPEC §1.1 order}).

  A class holds images and point clouds, only images (no `xyz/` anywhere) or only point clouds (no `rgb/`); every
  defect folder must hold the same ones, else the first folder that differs is named.
  """
  first, found, splits = None, None, {}
  for split in data.SPLITS:
    split_dir = class_dir / split
    if not split_dir.is_dir():
      raise DataError(f'{split_dir}: folder not found (expected the MVTec 3D-AD layout '
                      f'<class>/{split}/<defect>/{{rgb,xyz,gt}})')
    defects = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not defects:
      raise DataError(f'{split_dir}: empty folder (expected defect folders such as good/)')
    splits[split] = []
    for defect in defects:
      folder = split_dir / defect
      modalities, entries = _list_folder(folder, split)
      if first is None:
        first, found = folder, modalities
      elif modalities != found:
        odd = next(m for m in io.MODALITIES if (m in modalities) != (m in found))
        has = 'has no' if odd in found else 'has'
        raise DataError(f'{folder / odd}: this folder {has} {_describe((odd,))} but {first} holds '
                        f'{_describe(found)}; a class must hold the same modalities in every folder (both, only '
                        'rgb/ or only xyz/)')
      splits[split] += entries
  return found, splits


def read_entry(entry: Entry) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
  """(xyz float32 [H,W,3] or None, rgb uint8 [H,W,3] or None, mask uint8 [H,W]) with matching sizes."""
  xyz = io.read_xyz_tiff(entry.xyz) if entry.xyz is not None else None
  rgb = io.read_rgb_png(entry.rgb) if entry.rgb is not None else None
  if xyz is not None and rgb is not None and rgb.shape[:2] != xyz.shape[:2]:
    raise DataError(f'{entry.rgb}: image size {rgb.shape[:2]} differs from its point cloud {entry.xyz} '
                    f'{xyz.shape[:2]}')
  reference, size = (entry.xyz, xyz.shape[:2]) if xyz is not None else (entry.rgb, rgb.shape[:2])
  if entry.gt is None:
    return xyz, rgb, np.zeros(size, np.uint8)
  mask = io.read_mask_png(entry.gt)
  if mask.shape != size:
    kind = 'point cloud' if xyz is not None else 'image'
    raise DataError(f'{entry.gt}: mask size {mask.shape} differs from its {kind} {reference} {size}')
  return xyz, rgb, mask


def stored_arrays(xyz: np.ndarray | None, rgb: np.ndarray | None, mask: np.ndarray,
                  keep_orig: bool) -> tuple[dict[str, np.ndarray], list[str]]:
  """The stored `rgb`, `xyz`, `xyz_orig`, `mask` of one sample and its problems; a missing modality is [0, 0, 3].

  With a point cloud: SPEC §1.2 (`xyz_orig` only if `keep_orig`). Image only: just the square padding, since the
  plane and the clusters are found in the point cloud.
  """
  no_rgb, no_xyz = np.zeros((0, 0, 3), np.uint8), np.zeros((0, 0, 3), np.float32)
  if xyz is None:
    return dict(rgb=preprocessing.pad_square(rgb), xyz=no_xyz, xyz_orig=no_xyz,
                mask=preprocessing.pad_square(mask)), []
  sample = preprocessing.preprocess_mvtec(xyz, rgb, mask, seed=RANSAC_SEED)
  arrays = dict(rgb=no_rgb if sample.rgb is None else sample.rgb, xyz=sample.xyz,
                xyz_orig=sample.xyz_orig if keep_orig else no_xyz, mask=sample.mask)
  return arrays, [str(p) for p in sample.problems]


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
                                 disable_shuffling=True, metadata=tfds.core.MetadataDict(problems=[], modalities=[]))

  def _split_generators(self, dl_manager):
    modalities, splits = list_class(Path(dl_manager.manual_dir) / self.builder_config.name)
    self.info.metadata['modalities'] = list(modalities)
    return {split: self._generate_examples(entries, split) for split, entries in splits.items()}

  def _generate_examples(self, entries: list[Entry], split: str):
    for entry in entries:
      arrays, problems = stored_arrays(*read_entry(entry), keep_orig=split == 'train')
      self.info.metadata['problems'].extend(f'{entry.name}: {p}' for p in problems)
      yield entry.name, dict(arrays, label=int(entry.defect != 'good'), defect=entry.defect, name=entry.name,
                             problems=problems)
