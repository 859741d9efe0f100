"""A finished run in a work directory as a detector of one class, for any method of the registry.

`Run` reads a method's run record (`<method>/run.json`: its config and the exact versions of its outputs);
`Detector` loads the class's scorer, backbones and calibration from them and scores through `g2sf_jax.scoring`,
the one path the evaluation, predict and the exported bundle share, so a scan scored from the command line gets the
numbers and the decision the evaluation gives it. Rows, as the reference reports them: IMG and PCD (unimodal
PatchCore, algorithms.md §3.3), FUS (G²SF, §4.6), BTF (PatchCore on concatenated RGB + point features), M3DM, CFM
and those of any registered method.
"""
import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import ml_collections
import numpy as np
from jax.sharding import Mesh

from g2sf_jax import backbones, data, distributed, features, io, methods, scoring
from g2sf_jax.calibration import FILE as CALIBRATION_FILE, Calibration
from g2sf_jax.data import prepared
from g2sf_jax.errors import CorruptOutputError, MissingInputError
from g2sf_jax.methods import base
from g2sf_jax.workdir import Workdir


class Run:
  """A method's finished run in a work directory: its config and the versions of its outputs (`run.json`).

  Every output is resolved through the record, so a reader sees one consistent set even while a new run of the
  same work directory builds and publishes other versions; each is checked against its manifest when resolved.
  """

  def __init__(self, workdir: str | Path, method: str | None = None):
    self.workdir = Workdir(workdir)
    self.workdir.check()
    found = self.workdir.methods()
    if method is None:
      if len(found) != 1:
        raise MissingInputError(f'{self.workdir.root}: ' + (
            f'holds runs of several methods {found}; choose one (--method)' if found
            else 'no finished run of experiments.run here (no <method>/run.json)'))
      method = found[0]
    self.record = self.workdir.read_record(method)
    self.method = method
    try:
      self.config = ml_collections.ConfigDict(self.record['config'])
      self.classes = tuple(self.record['classes'])
    except (KeyError, TypeError, ValueError) as e:
      raise CorruptOutputError(f'{self.workdir.record_path(method)}: not a g2sf-jax run record ({e})') from None

  def check_class(self, class_name: str) -> str:
    """`class_name` if the run covers it; '' picks the only class of a one-class run."""
    name = class_name or (self.classes[0] if len(self.classes) == 1 else '')
    if name not in self.classes:
      raise MissingInputError(f'{self.workdir.root}: the {self.method} run covers the classes {list(self.classes)}; '
                              f'choose one of them (got {class_name!r})')
    return name

  def output(self, class_name: str, stage_id: str) -> Path:
    """The recorded output folder of `stage_id` for `class_name` ('' for a dataset-scope stage), verified."""
    rebuild = (f'python -m experiments.run with the config of {self.workdir.record_path(self.method)} and '
               f'--config.workdir={self.workdir.root} (a run rebuilds what is damaged)')
    return self.workdir.recorded_version(self.record, class_name, stage_id, rebuild).path


@dataclasses.dataclass(frozen=True)
class Outputs:
  """`base.ScorerContext` over a finished run."""
  config: ml_collections.ConfigDict
  class_name: str
  mesh: Mesh
  run: Run
  stages: dict[str, base.Stage]  # the method's stages by id

  def dir(self, stage_id: str) -> Path:
    stage = self.stages[stage_id]
    return self.run.output('' if stage.scope == 'dataset' else self.class_name, stage_id)


def make_backbones(config: ml_collections.ConfigDict, mesh: Mesh):
  """(rgb backbone or None, point backbone or None) for the config's modalities, data parallel over `mesh`."""
  mods = base.modalities(config)
  rgb = backbones.make_rgb_backbone(config, mesh) if 'rgb' in mods else None
  point = backbones.make_point_backbone(config, mesh) if 'xyz' in mods else None
  return rgb, point


def load_config(workdir: str | Path, method: str | None = None) -> ml_collections.ConfigDict:
  """The config of a method's finished run in `workdir`; `method=None` picks the only one there."""
  return Run(workdir, method).config


class Detector(scoring.Scoring):
  """A trained detector of one class: the run's backbones, its method's scorer and its calibration
  (`scoring.Model`; score, score_files, score_entries and score_stored come from `scoring.Scoring`)."""

  def __init__(self, config: ml_collections.ConfigDict, scorer: base.Scorer, rgb_backbone=None,
               point_backbone=None, data_modalities: Sequence[str] | None = None, class_name: str = '',
               calibration: Calibration | None = None, run: Run | None = None):
    self.config = config
    self.run = run  # the finished run it was loaded from (`load`): its record names the versions read
    self.class_name = class_name
    self.method = methods.get(config.method)
    self.scorer = scorer
    self.rows = tuple(self.method.rows(config))
    self.main_row = self.method.main_row(config)
    self.modalities = base.modalities(config)
    # What the class's prepared data holds: a scan is preprocessed with all of it, as `prepare` and the load
    # transforms did for training (an RGB-only run on MVTec data still cleans the RGB with the cloud's plane).
    self.data_modalities = tuple(data_modalities or self.modalities)
    self.needs = tuple(scorer.needs)
    self.kind = data.get(config.dataset)
    self.batch_size = config.batch_size
    self.rgb_backbone = rgb_backbone
    self.point_backbone = point_backbone
    self.min_points = getattr(point_backbone, 'min_points', 1) if point_backbone is not None else 1
    self.calibration = calibration
    self.unit_mm = float(config.get('unit_mm', 1000.0))
    self.clean = bool(config.get('clean_scans', True))

  @classmethod
  def load(cls, workdir: str | Path, class_name: str, method: str | None = None, with_backbones: bool = True,
           mesh: Mesh | None = None) -> 'Detector':
    """The detector a finished run left in `workdir` for `class_name` (`method=None`: the only method there).

    Everything is read from the versions the run recorded, under the work directory's readers' lock, and held in
    memory afterwards: a run that publishes new versions meanwhile changes nothing for this detector.
    """
    wd = Workdir(workdir)
    with wd.reading():
      run = Run(workdir, method)
      class_name = run.check_class(class_name)
      config = run.config
      m = methods.get(config.method)
      stages = {s.id: s for s in m.stages(config)}
      mesh = mesh if mesh is not None else distributed.make_mesh()
      rgb, point = make_backbones(config, mesh) if with_backbones else (None, None)
      outputs = Outputs(config, class_name, mesh, run, stages)
      calibration = Calibration.load(run.output(class_name, f'{config.method}/calibrate') / CALIBRATION_FILE)
      return cls(config, m.scorer(outputs), rgb, point,
                 data_modalities(config, run.output(class_name, 'prepare'), class_name), class_name, calibration,
                 run)

  # scoring.Model

  def features(self, inputs: Sequence[Mapping[str, np.ndarray]], kinds: Sequence[str]) -> dict[str, np.ndarray]:
    return features.extract(self.rgb_backbone, self.point_backbone, inputs, self.batch_size, kinds)

  def scores(self, feats: Mapping[str, np.ndarray]) -> dict[str, base.RowScores]:
    return self.scorer(feats)

def data_modalities(config: ml_collections.ConfigDict, data_dir: Path, class_name: str) -> tuple[str, ...]:
  """What preprocessing uses: the modalities of the class's prepared data in `data_dir` (both when the run uses
  both, or for Eyecandies, without reading it)."""
  mods = base.modalities(config)
  if set(mods) == set(io.MODALITIES) or data.get(config.dataset).mask_rgb_by_xyz:  # Eyecandies: always both
    return io.MODALITIES
  return prepared.available_modalities(config.dataset, data_dir, class_name)
