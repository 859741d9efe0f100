"""Scores samples with what a run left in its work directory: memory banks and, for G²SF, the trained fuser.

The evaluation stage and `experiments.predict` both score through `Detector`, so a scan scored from the command line
gets the numbers the evaluation would give it. Rows, as the reference reports them: IMG and PCD (unimodal PatchCore,
SPEC §3.3), FUS (G²SF, SPEC §4.6), BTF (PatchCore on concatenated RGB + point features).
"""
import dataclasses
import json
from pathlib import Path
from typing import Sequence

import ml_collections
import numpy as np

from g2sf_jax import backbones, data, features, memory_bank
from g2sf_jax.fusion import infer as fusion_infer
from g2sf_jax.fusion import train as fusion_train

GRID = 56


def rows_of(config) -> tuple[str, ...]:
  """The scoring rows a config produces, in table order."""
  mods = modalities(config)
  if config.method == 'btf':
    if mods != ('rgb', 'xyz'):
      raise ValueError(f"method 'btf' needs modalities 'rgb+xyz', got {config.modalities!r}")
    return ('BTF',)
  if config.method != 'g2sf':
    raise ValueError(f"config.method must be 'g2sf' or 'btf', got {config.method!r}")
  rows = (('IMG',) if 'rgb' in mods else ()) + (('PCD',) if 'xyz' in mods else ())
  return rows + (('FUS',) if len(mods) == 2 else ())


def modalities(config) -> tuple[str, ...]:
  known = {'rgb+xyz': ('rgb', 'xyz'), 'rgb': ('rgb',), 'xyz': ('xyz',)}
  if config.modalities not in known:
    raise ValueError(f'config.modalities must be one of {sorted(known)}, got {config.modalities!r}')
  return known[config.modalities]


def make_backbones(config):
  """(rgb backbone or None, point backbone or None) for the config's modalities."""
  mods = modalities(config)
  rgb = backbones.make_rgb_backbone(config) if 'rgb' in mods else None
  point = backbones.make_point_backbone(config) if 'xyz' in mods else None
  return rgb, point


def bank_features(config, img: np.ndarray | None, pcd: np.ndarray | None,
                  stats: dict | None = None) -> dict[str, np.ndarray]:
  """Raw backbone features of N samples → the rows each bank is built from / searched with.

  img [N, h, w, Cr], pcd [N, 56, 56, Cp] → {'img': [N·h·w, Cr], 'pcd': [N·3136, Cp]} for G²SF, or
  {'joint': [N·3136, Cr+Cp]} for BTF, whose two halves are scaled by the train banks' scalar `stats`
  ({'img': (mean, std), 'pcd': (mean, std)}) so that neither modality dominates the distance.
  """
  if config.method == 'btf':
    img56 = img if img.shape[1] == GRID else features.upsample_nearest2x(img)
    (mi, si), (mp, sp) = stats['img'], stats['pcd']
    return {'joint': features.joint_features((img56 - mi) / si, (pcd - mp) / sp).reshape(-1, img.shape[-1] +
                                                                                           pcd.shape[-1])}
  out = {}
  if img is not None:
    out['img'] = img.reshape(-1, img.shape[-1])
  if pcd is not None:
    out['pcd'] = pcd.reshape(-1, pcd.shape[-1])
  return out


@dataclasses.dataclass(frozen=True)
class SampleScores:
  """One sample's image score and 224×224 pixel map per row (before any test-set min–max normalisation)."""
  image: dict[str, float]
  maps: dict[str, np.ndarray]


class Detector:
  """A trained detector of one class: backbones, memory banks and (G²SF) the fuser."""

  def __init__(self, config: ml_collections.ConfigDict, banks: dict[str, memory_bank.ModalityBank],
               bank_meta: dict, fuser: fusion_train.FusionState | None, rgb_backbone=None, point_backbone=None,
               mesh=None):
    self.config = config
    self.rows = rows_of(config)
    self.banks = banks
    self.bank_meta = bank_meta
    self.fuser = fuser
    self.rgb_backbone = rgb_backbone
    self.point_backbone = point_backbone
    self.mesh = mesh
    self._placed = {name: memory_bank.place_bank(b.coreset, mesh) for name, b in banks.items()}
    if 'FUS' in self.rows and fuser is None:
      raise ValueError('Detector: the FUS row needs a trained fuser')

  @classmethod
  def load(cls, workdir: str | Path, class_name: str, with_backbones: bool = True) -> 'Detector':
    """The detector a finished run left in `workdir` for `class_name` (`experiments.run` writes config.json)."""
    workdir = Path(workdir)
    config_path = workdir / 'config.json'
    if not config_path.is_file():
      raise FileNotFoundError(f'{config_path} not found: {workdir} is not a work directory of experiments.run')
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    banks, meta = memory_bank.load(workdir / class_name / 'banks',
                                   how_to_make=f'the experiments.run command of {workdir} with '
                                               f'--config.classes={class_name} --config.stages=features')
    fuser = None
    if 'FUS' in rows_of(config):
      fuser = fusion_train.load(workdir / class_name / 'fuser' / 'best')
    rgb, point = make_backbones(config) if with_backbones else (None, None)
    return cls(config, banks, meta, fuser, rgb, point)

  def score_features(self, img: np.ndarray | None, pcd: np.ndarray | None) -> list[SampleScores]:
    """Raw features of N samples (img [N, h, w, Cr], pcd [N, 56, 56, Cp]) → one `SampleScores` per sample."""
    n = (img if img is not None else pcd).shape[0]
    blur = self.config.scoring.blur
    per_row: dict[str, list] = {}
    img_n = None
    if img is not None and 'img' in self.banks:
      img_n = self.banks['img'].normaliser(img)
      img56 = img_n if img_n.shape[1] == GRID else features.upsample_nearest2x(img_n)
      per_row['IMG'] = memory_bank.unimodal_scores_batch(img56.reshape(n, GRID * GRID, -1), self._placed['img'],
                                                         blur=blur)
    if pcd is not None and 'pcd' in self.banks:
      per_row['PCD'] = memory_bank.unimodal_scores_batch(pcd.reshape(n, GRID * GRID, -1), self._placed['pcd'],
                                                         blur=blur)
    if 'joint' in self.banks:
      joint = bank_features(self.config, img, pcd, self.bank_meta['btf_stats'])['joint']
      per_row['BTF'] = memory_bank.unimodal_scores_batch(joint.reshape(n, GRID * GRID, -1), self._placed['joint'],
                                                         blur=blur)
    out = [SampleScores({}, {}) for _ in range(n)]
    for row, results in per_row.items():
      for s, r in zip(out, results):
        s.image[row] = float(r.image_score)
        s.maps[row] = np.asarray(r.map224)
    if 'FUS' in self.rows:
      coresets = (self._placed['img'], self._placed['pcd'])
      for i, s in enumerate(out):
        fused = fusion_infer.score(self.fuser, self.config, img_n[i], pcd[i], coresets)
        s.image['FUS'] = float(fused['image_score'])
        s.maps['FUS'] = np.asarray(fused['map224'])
    return out

  def score_samples(self, samples: Sequence[dict]) -> list[SampleScores]:
    """Model-ready samples (`data.load_split` format: `rgb`, `xyz` at 224) → scores."""
    feats = features.extract(self.rgb_backbone, self.point_backbone, samples, self.config.batch_size)
    return self.score_features(feats.get('img'), feats.get('pcd'))

  def score(self, rgb: np.ndarray | None = None, xyz: np.ndarray | None = None) -> SampleScores:
    """One new scan: `rgb` uint8 [H, W, 3] and/or organised `xyz` float32 [H, W, 3] (zeros = missing points).

    Applies the SPEC §1.4 load transforms; the maps are 224×224 (resize them to H×W for an original-size map).
    """
    mods = modalities(self.config)
    sample = {'name': 'input'}
    if 'rgb' in mods:
      if rgb is None:
        raise ValueError('this detector needs an RGB image (it was trained with modalities '
                         f'{self.config.modalities!r})')
      rgb = np.asarray(rgb)
      if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f'rgb: expected uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}')
      sample['rgb'] = data.resize_rgb(rgb)
    if 'xyz' in mods:
      if xyz is None:
        raise ValueError('this detector needs an organised point cloud xyz (it was trained with modalities '
                         f'{self.config.modalities!r})')
      xyz = np.asarray(xyz)
      if xyz.ndim != 3 or xyz.shape[2] != 3 or not np.issubdtype(xyz.dtype, np.floating):
        raise ValueError(f'xyz: expected float [H, W, 3], got {xyz.dtype} {xyz.shape}')
      if not np.isfinite(xyz).all():
        raise ValueError('xyz: contains NaN or infinite values; mark missing points with (0, 0, 0)')
      if rgb is not None and rgb.shape[:2] != xyz.shape[:2]:
        raise ValueError(f'rgb {rgb.shape[:2]} and xyz {xyz.shape[:2]} differ in size')
      small = data.resize_xyz(xyz.astype(np.float32))
      if not data.valid_mask(small).any():
        raise ValueError('xyz: the point cloud is empty (no pixel has all three coordinates non-zero)')
      sample['xyz'] = small
    return self.score_samples([sample])[0]

