"""Scores samples with what a method's run left in its work directory, for any method of the registry.

The evaluation stage and `experiments.predict` both score through a method's `Scorer` (`g2sf_jax.methods`), and
`Detector` wraps it with the run's backbones, so a scan scored from the command line gets the numbers the
evaluation would give it. Rows, as the reference reports them: IMG and PCD (unimodal PatchCore, SPEC §3.3), FUS
(G²SF, SPEC §4.6), BTF (PatchCore on concatenated RGB + point features), and those of any registered method.
"""
import dataclasses
import json
from pathlib import Path
from typing import Sequence

import ml_collections
import numpy as np
from jax.sharding import Mesh

from g2sf_jax import backbones, distributed, features, methods
from g2sf_jax.data import transforms
from g2sf_jax.methods import base
from g2sf_jax.workdir import Workdir


@dataclasses.dataclass(frozen=True)
class SampleScores:
  """One sample's image score and 224×224 pixel map per row (before any test-set min–max normalisation)."""
  image: dict[str, float]
  maps: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Outputs:
  """`base.ScorerContext` over a finished work directory."""
  config: ml_collections.ConfigDict
  class_name: str
  mesh: Mesh
  workdir: Workdir
  scopes: dict[str, str]  # stage id → 'class' | 'dataset'

  def dir(self, stage_id: str) -> Path:
    dataset_scope = self.scopes.get(stage_id) == 'dataset'
    return self.workdir.stage_dir(stage_id, '' if dataset_scope else self.class_name)


def make_backbones(config: ml_collections.ConfigDict):
  """(rgb backbone or None, point backbone or None) for the config's modalities."""
  mods = base.modalities(config)
  rgb = backbones.make_rgb_backbone(config) if 'rgb' in mods else None
  point = backbones.make_point_backbone(config) if 'xyz' in mods else None
  return rgb, point


def load_config(workdir: str | Path, method: str | None = None) -> ml_collections.ConfigDict:
  """The config of a method's finished run in `workdir`; `method=None` picks the only one there."""
  wd = Workdir(workdir)
  found = wd.methods()
  if method is None:
    if len(found) != 1:
      raise FileNotFoundError(f'{wd.root}: ' + (f'holds runs of several methods {found}; choose one (--method)'
                                                 if found else 'no finished run of experiments.run here '
                                                               '(no <method>/config.json)'))
    method = found[0]
  path = wd.config_path(method)
  if not path.is_file():
    raise FileNotFoundError(f'{path} not found: {wd.root} holds no finished {method!r} run '
                            f'(finished: {found or "none"})')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


class Detector:
  """A trained detector of one class: the run's backbones and its method's scorer."""

  def __init__(self, config: ml_collections.ConfigDict, scorer: base.Scorer, rgb_backbone=None,
               point_backbone=None):
    self.config = config
    self.method = methods.get(config.method)
    self.scorer = scorer
    self.rows = tuple(self.method.rows(config))
    self.main_row = self.method.main_row(config)
    self.rgb_backbone = rgb_backbone
    self.point_backbone = point_backbone

  @classmethod
  def load(cls, workdir: str | Path, class_name: str, method: str | None = None, with_backbones: bool = True,
           mesh: Mesh | None = None) -> 'Detector':
    """The detector a finished run left in `workdir` for `class_name` (`method=None`: the only method there)."""
    config = load_config(workdir, method)
    m = methods.get(config.method)
    scopes = {s.id: s.scope for s in m.stages(config)}
    outputs = Outputs(config, class_name, mesh if mesh is not None else distributed.make_mesh(), Workdir(workdir),
                      scopes)
    rgb, point = make_backbones(config) if with_backbones else (None, None)
    return cls(config, m.scorer(outputs), rgb, point)

  def score_features(self, img: np.ndarray | None, pcd: np.ndarray | None) -> list[SampleScores]:
    """Raw features of N samples (img [N, h, w, Cr], pcd [N, 56, 56, Cp]) → one `SampleScores` per sample."""
    feats = {k: v for k, v in (('img', img), ('pcd', pcd)) if v is not None}
    rows = self.scorer(feats)
    n = next(iter(feats.values())).shape[0]
    return [SampleScores({row: float(r.image[i]) for row, r in rows.items()},
                         {row: np.asarray(r.maps[i]) for row, r in rows.items()}) for i in range(n)]

  def score_samples(self, samples: Sequence[dict]) -> list[SampleScores]:
    """Model-ready samples (`prepared.load_split` format: `rgb`, `xyz` at 224) → scores."""
    feats = features.extract(self.rgb_backbone, self.point_backbone, samples, self.config.batch_size)
    return self.score_features(feats.get('img'), feats.get('pcd'))

  def score(self, rgb: np.ndarray | None = None, xyz: np.ndarray | None = None) -> SampleScores:
    """One new scan: `rgb` uint8 [H, W, 3] and/or organised `xyz` float32 [H, W, 3] (zeros = missing points).

    Applies the SPEC §1.4 load transforms; the maps are 224×224 (resize them to H×W for an original-size map).
    """
    mods = base.modalities(self.config)
    sample = {}
    if 'rgb' in mods:
      if rgb is None:
        raise ValueError('this detector needs an RGB image (it was trained with modalities '
                         f'{self.config.modalities!r})')
      rgb = np.asarray(rgb)
      if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f'rgb: expected uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}')
      sample['rgb'] = rgb
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
      sample['xyz'] = xyz.astype(np.float32)
    model_input = transforms.model_input(sample, mask_rgb_by_xyz=False)
    if 'xyz' in model_input and not transforms.valid_mask(model_input['xyz']).any():
      raise ValueError('xyz: the point cloud is empty (no pixel has all three coordinates non-zero)')
    return self.score_samples([dict(model_input, name='input')])[0]
