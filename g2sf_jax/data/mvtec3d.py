"""MVTec 3D-AD as a dataset kind: list the raw layout (algorithms.md §1.1), read a sample's files, preprocess it
(algorithms.md §1.2).

A class may also hold one modality only: no `xyz/` folders (an RGB inspection set: images stored padded, nothing else to
preprocess) or no `rgb/` folders (3D scans: algorithms.md §1.2 on the clouds). The generated synthetic dataset uses the
same layout (`g2sf_jax/data/synthetic.py`). The user's files are only read.
"""
import dataclasses
from pathlib import Path

import numpy as np

from g2sf_jax import io
from g2sf_jax.data import kind, preprocessing
from g2sf_jax.io import DataError

CLASSES = ('bagel', 'cable_gland', 'carrot', 'cookie', 'dowel', 'foam', 'peach', 'potato', 'rope', 'tire')
MIN_SIDE = 8  # pixels: a smaller image or cloud (0×0, 1×1, …) cannot be resized to the 224² model input honestly
RANSAC_SEED = 0  # The reference leaves its RANSAC unseeded; one fixed seed makes preparation reproducible.
_SUBFOLDERS = {'rgb': ('rgb', '.png', 'image'), 'xyz': ('xyz', '.tiff', 'point cloud')}


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str           # '<split>/<defect>/<stem>'
  defect: str
  rgb: Path | None    # None in a class without images
  xyz: Path | None    # None in a class without point clouds
  gt: Path | None     # None for good samples (and new scans): their mask is all zero (algorithms.md §1.1)


def _files(folder: Path, suffix: str) -> dict[str, Path]:
  return {p.stem: p for p in sorted(folder.glob(f'*{suffix}'))} if folder.is_dir() else {}


def _describe(modalities: tuple[str, ...]) -> str:
  return ' and '.join(f'{m}/*{_SUBFOLDERS[m][1]}' for m in modalities)


def _list_folder(folder: Path, split: str, ground_truth: str = 'required') -> tuple[tuple[str, ...], list[Entry]]:
  """The modalities one defect folder holds (those with files) and its samples; stems must match across them.

  `ground_truth` for a folder other than `good/`: 'required' (a `gt/*.png` per sample), 'optional' (used where
  present) or 'ignored' (new scans).
  """
  files = {m: _files(folder / sub, suffix) for m, (sub, suffix, _) in _SUBFOLDERS.items()}
  modalities = tuple(m for m in io.MODALITIES if files[m])
  if not modalities:
    raise DataError(f'{folder}: no samples (expected rgb/*.png and/or xyz/*.tiff)')
  gt = _files(folder / 'gt', '.png') if ground_truth != 'ignored' and folder.name != 'good' else None
  entries = []
  for stem in sorted(set().union(*(files[m].keys() for m in modalities))):
    for m in modalities:
      if stem not in files[m]:
        sub, suffix, what = _SUBFOLDERS[m]
        other = next(files[o][stem] for o in modalities if stem in files[o])
        raise DataError(f'{folder / sub / (stem + suffix)}: missing {what} (the sample exists as {other}; every '
                        'sample of a folder needs the same modalities)')
    paths = {m: files[m].get(stem) for m in io.MODALITIES}
    if gt is not None and stem not in gt and ground_truth == 'required':
      raise DataError(f'{folder / "gt" / (stem + ".png")}: missing ground truth for the defect sample '
                      f'{paths[modalities[0]]}')
    entries.append(Entry(f'{split}/{folder.name}/{stem}', folder.name, paths['rgb'], paths['xyz'],
                         gt.get(stem) if gt is not None else None))
  return modalities, entries


def list_class(class_dir: Path, strict: bool = True) -> kind.Listing:
  """The class's modalities and its entries per split in algorithms.md §1.1 order.

  A class holds images and point clouds, only images (no `xyz/` anywhere) or only point clouds (no `rgb/`); every
  defect folder must hold the same ones, else the first folder that differs is named. `train/` holds good parts only
  (`train/good/`). `strict` (MVTec 3D-AD): `test/` is required and each of its defect scans needs its `gt/` mask;
  `validation/` is optional. Otherwise (a user's own part, the `folder` kind) `validation/` and `test/` are both
  optional, and a defect scan without a mask counts for the image metrics only.
  """
  class_dir = Path(class_dir)
  if not class_dir.is_dir():
    raise DataError(f'{class_dir}: class folder not found')
  first, found, splits = None, None, {}
  for split in kind.SPLITS:
    split_dir = class_dir / split
    if not split_dir.is_dir():
      if split == 'train' or (split == 'test' and strict):
        raise DataError(f'{split_dir}: folder not found (expected the layout <class>/{split}/<defect>/{{rgb,xyz'
                        f'{",gt" if split == "test" else ""}}}: train/good/ with good parts'
                        f'{", test/ with labelled scans" if strict else ""})')
      continue
    defects = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not defects:
      raise DataError(f'{split_dir}: empty folder (expected defect folders such as good/)')
    if split == 'train' and defects != ['good']:
      odd = next(d for d in defects if d != 'good')
      raise DataError(f'{split_dir / odd}: training data are good parts only (train/good/); move defective scans '
                      'to test/ or validation/')
    splits[split] = []
    for defect in defects:
      folder = split_dir / defect
      modalities, entries = _list_folder(folder, split, 'required' if strict else 'optional')
      if first is None:
        first, found = folder, modalities
      elif modalities != found:
        odd = next(m for m in io.MODALITIES if (m in modalities) != (m in found))
        has = 'has no' if odd in found else 'has'
        raise DataError(f'{folder / odd}: this folder {has} {_describe((odd,))} but {first} holds '
                        f'{_describe(found)}; a class must hold the same modalities in every folder (both, only '
                        'rgb/ or only xyz/)')
      splits[split] += entries
  return kind.Listing(found, splits)


def read_entry(entry: Entry, max_pixels: int = io.MAX_PIXELS) -> tuple[np.ndarray | None, np.ndarray | None,
                                                                        np.ndarray]:
  """(xyz float32 [H,W,3] or None, rgb uint8 [H,W,3] or None, mask uint8 [H,W]) with matching sizes."""
  xyz = io.read_xyz_tiff(entry.xyz, max_pixels) if entry.xyz is not None else None
  rgb = io.read_rgb_png(entry.rgb, max_pixels) if entry.rgb is not None else None
  if xyz is not None and rgb is not None and rgb.shape[:2] != xyz.shape[:2]:
    raise DataError(f'{entry.rgb}: image size {rgb.shape[:2]} differs from its point cloud {entry.xyz} '
                    f'{xyz.shape[:2]}')
  reference, size = (entry.xyz, xyz.shape[:2]) if xyz is not None else (entry.rgb, rgb.shape[:2])
  if min(size) < MIN_SIDE:
    raise DataError(f'{reference}: {size[0]}×{size[1]} pixels, too small to score (at least {MIN_SIDE}×{MIN_SIDE})')
  if entry.gt is None:
    return xyz, rgb, np.zeros(size, np.uint8)
  mask = io.read_mask_png(entry.gt, max_pixels)
  if mask.shape != size:
    what = 'point cloud' if xyz is not None else 'image'
    raise DataError(f'{entry.gt}: mask size {mask.shape} differs from its {what} {reference} {size}')
  return xyz, rgb, mask


def preprocess(xyz: np.ndarray | None, rgb: np.ndarray | None, mask: np.ndarray, keep_orig: bool,
               clean: bool = True, has_mask: bool = True) -> kind.Stored:
  """algorithms.md §1.2 on one sample's arrays (`xyz_orig` only if `keep_orig`). Image only, or `clean=False` (a
  scanner whose clouds need no cleaning): just the square padding, since the plane and the clusters are found in
  the point cloud."""
  size = tuple(mask.shape[:2])
  pad = lambda x: None if x is None else preprocessing.pad_square(x)
  if xyz is None or not clean:
    return kind.Stored(pad(rgb), pad(xyz), pad(xyz) if keep_orig else None, pad(mask), raw_size=size, raw_rgb=rgb,
                       has_mask=has_mask)
  sample = preprocessing.preprocess_mvtec(xyz, rgb, mask, seed=RANSAC_SEED)
  return kind.Stored(sample.rgb, sample.xyz, sample.xyz_orig if keep_orig else None, sample.mask,
                     tuple(str(p) for p in sample.problems), raw_size=size, raw_rgb=rgb, has_mask=has_mask)


def load_entry(entry: Entry, keep_orig: bool = False, max_pixels: int = io.MAX_PIXELS,
               clean: bool = True) -> kind.Stored:
  """Reads one raw sample and preprocesses it as `prepare` does."""
  return preprocess(*read_entry(entry, max_pixels), keep_orig=keep_orig, clean=clean,
                    has_mask=entry.gt is not None or entry.defect in ('good', 'scan'))


def scan_entry(rgb: str | Path | None = None, xyz: str | Path | None = None) -> Entry:
  """A new scan from its raw files as they lie in the dataset layout: the RGB PNG and/or the organised xyz TIFF."""
  if rgb is None and xyz is None:
    raise DataError('a scan needs its rgb PNG and/or its xyz TIFF')
  stem = Path(xyz if xyz is not None else rgb).stem
  return Entry(f'scan/{stem}', 'scan', None if rgb is None else Path(rgb), None if xyz is None else Path(xyz), None)


def scan_folder(folder: Path) -> list[Entry]:
  """The scans of a folder laid out like one defect folder (`rgb/*.png` and/or `xyz/*.tiff`, paired by name); a
  `gt/` folder is ignored."""
  folder = Path(folder)
  if not folder.is_dir():
    raise DataError(f'{folder}: folder not found (expected rgb/*.png and/or xyz/*.tiff)')
  _, entries = _list_folder(folder, 'scan', ground_truth='ignored')
  return [dataclasses.replace(e, name=f'{folder.name}/{Path(e.name).name}', defect='scan') for e in entries]


def preprocess_arrays(rgb: np.ndarray | None, xyz: np.ndarray | None, clean: bool = True) -> kind.Stored:
  """algorithms.md §1.2 on arrays read from a scan's raw files (as `load_entry` applies it to the files)."""
  size = (xyz if xyz is not None else rgb).shape[:2]
  return preprocess(xyz, rgb, np.zeros(size, np.uint8), keep_orig=False, clean=clean)


KIND = kind.DatasetKind('mvtec3d', CLASSES, list_class, load_entry, ('rgb', 'xyz'), scan_entry, scan_folder,
                        preprocess_arrays, open_classes=True)
