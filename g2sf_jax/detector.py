"""Scores samples with what a method's run left in its work directory, for any method of the registry.

The evaluation stage and `experiments.predict` both score through a method's `Scorer` (`g2sf_jax.methods`), and
`Detector` wraps it with the run's backbones, so a scan scored from the command line gets the numbers the
evaluation would give it. Rows, as the reference reports them: IMG and PCD (unimodal PatchCore, algorithms.md §3.3), FUS
(G²SF, algorithms.md §4.6), BTF (PatchCore on concatenated RGB + point features), and those of any registered method.
"""
import dataclasses
from pathlib import Path
from typing import Sequence

import ml_collections
import numpy as np
from jax.sharding import Mesh

from g2sf_jax import backbones, data, distributed, features, io, methods
from g2sf_jax.data import kind, mvtec3d, prepared, transforms
from g2sf_jax.errors import CorruptOutputError, DataError, MissingInputError, UnscorableError
from g2sf_jax.methods import base
from g2sf_jax.workdir import Workdir


@dataclasses.dataclass(frozen=True)
class SampleScores:
  """One sample's image score and 224×224 pixel map per row (before any test-set min–max normalisation).

  status 'unscorable' (with the reason, and no scores) for a scan that cannot be scored honestly; problems: what
  preprocessing worked around (e.g. 'few_border_points: … background plane not removed').
  """
  image: dict[str, float]
  maps: dict[str, np.ndarray]
  name: str = ''
  status: str = 'ok'
  reason: str = ''
  problems: tuple[str, ...] = ()


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
  loaded_backbones: tuple = (None, None)

  def backbones(self):
    return self.loaded_backbones

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


class Detector:
  """A trained detector of one class: the run's backbones and its method's scorer."""

  def __init__(self, config: ml_collections.ConfigDict, scorer: base.Scorer, rgb_backbone=None,
               point_backbone=None, data_modalities: Sequence[str] | None = None, class_name: str = '',
               map_ranges: dict[str, tuple[float, float]] | None = None):
    self.config = config
    self.class_name = class_name
    self.map_ranges = dict(map_ranges or {})  # row → the test set's (min, max) pixel score
    # What the class's prepared data holds: a scan is preprocessed with all of it, as `prepare` and the load
    # transforms did for training (an RGB-only run on MVTec data still cleans the RGB with the cloud's plane).
    self.data_modalities = tuple(data_modalities or base.modalities(config))
    self.kind = data.get(config.dataset)
    self.method = methods.get(config.method)
    self.scorer = scorer
    self.rows = tuple(self.method.rows(config))
    self.main_row = self.method.main_row(config)
    self.rgb_backbone = rgb_backbone
    self.point_backbone = point_backbone

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
      outputs = Outputs(config, class_name, mesh, run, stages, (rgb, point))
      return cls(config, m.scorer(outputs), rgb, point, _data_modalities(config, run, class_name), class_name,
                 _map_ranges(run.output(class_name, f'{config.method}/evaluate')))

  def score_features(self, img: np.ndarray | None, pcd: np.ndarray | None,
                     inputs: dict[str, np.ndarray] | None = None) -> list[SampleScores]:
    """Raw features of N samples (img [N, h, w, Cr], pcd [N, 56, 56, Cp]) → one `SampleScores` per sample.

    `inputs`: the model inputs of the same samples (`xyz` [N, 224, 224, 3], …) for a scorer that asks for them.
    """
    feats = {k: v for k, v in (('img', img), ('pcd', pcd)) if v is not None}
    wanted = base.scorer_inputs(self.scorer)
    if wanted:
      missing = [k for k in wanted if inputs is None or k not in inputs]
      if missing:
        raise ValueError(f'the {self.method.name} scorer also needs the model inputs {missing}')
      feats.update({k: inputs[k] for k in wanted})
    rows = self.scorer(feats)
    n = next(iter(feats.values())).shape[0]
    out = []
    for i in range(n):
      bad = [row for row, r in rows.items() if not (np.isfinite(r.image[i]) and np.isfinite(r.maps[i]).all())]
      if bad:  # never reported as a score
        out.append(SampleScores({}, {}, status='unscorable', reason=f'the {", ".join(bad)} scores came out NaN or '
                                'infinite (damaged inputs or model)'))
      else:
        out.append(SampleScores({row: float(r.image[i]) for row, r in rows.items()},
                                {row: np.asarray(r.maps[i]) for row, r in rows.items()}))
    return out

  def score_samples(self, samples: Sequence[dict]) -> list[SampleScores]:
    """Model-ready samples (`prepared.load_split` format: `rgb`, `xyz` at 224) → scores."""
    feats = features.extract(self.rgb_backbone, self.point_backbone, samples, self.config.batch_size)
    return self.score_features(feats.get('img'), feats.get('pcd'), _stack_inputs(samples))

  def score_stored(self, stored: Sequence[kind.Stored], names: Sequence[str]) -> list[SampleScores]:
    """Preprocessed scans (what `prepare` stores, or `kind.load_entry` returns) → scores, in one batched pass.

    A scan with too few valid points for the point backbone, or whose point features come out all zero (e.g. all
    points coincide, so FPFH has no spacing), is returned as `status='unscorable'` with the reason, never scored.
    """
    mods = base.modalities(self.config)
    inputs, out = [], [None] * len(stored)
    for i, (st, name) in enumerate(zip(stored, names)):
      missing = [m for m in self.data_modalities if getattr(st, m) is None]
      if missing:
        raise DataError(f'{name}: this detector needs {_needs(missing)} {self._trained_with()}')
      sample = transforms.model_input({m: getattr(st, m) for m in self.data_modalities}, self.kind.mask_rgb_by_xyz)
      sample = {k: v for k, v in sample.items() if k in mods or k not in io.MODALITIES}
      reason = self._unscorable_input(sample)
      if reason:
        out[i] = SampleScores({}, {}, name, 'unscorable', reason, st.problems)
      else:
        inputs.append((i, dict(sample, name=name)))
    if inputs:
      feats = features.extract(self.rgb_backbone, self.point_backbone, [s for _, s in inputs], self.config.batch_size)
      ok = np.ones(len(inputs), bool)
      if 'pcd' in feats:
        ok = ~features.background_mask(feats['pcd']).all(axis=(1, 2))
      for (i, sample), good in zip(inputs, ok):
        if not good:
          out[i] = SampleScores({}, {}, sample['name'], 'unscorable', 'the point features are all zero (a '
                                'degenerate cloud, e.g. all points coincide so FPFH has no point spacing)',
                                stored[i].problems)
      if ok.any():
        kept = [s for (_, s), good in zip(inputs, ok) if good]
        scored = self.score_features(*(feats[k][ok] if k in feats else None for k in ('img', 'pcd')),
                                     _stack_inputs(kept))
        for (i, sample), s in zip([x for x, good in zip(inputs, ok) if good], scored):
          out[i] = dataclasses.replace(s, name=sample['name'], problems=stored[i].problems)
    return out

  def _trained_with(self) -> str:
    mods = '+'.join(base.modalities(self.config))
    if self.data_modalities == base.modalities(self.config):
      return f'(it was trained with modalities {mods!r})'
    return (f'(it scores {mods!r}, but its class was prepared from {"+".join(self.data_modalities)!r} files, which '
            'preprocessing uses together)')

  def _unscorable_input(self, sample: dict) -> str:
    if 'xyz' not in sample:
      return ''
    valid = int(transforms.valid_mask(sample['xyz']).sum())
    need = getattr(self.point_backbone, 'min_points', 1) if self.point_backbone is not None else 1
    if valid < need:
      return (f'{valid} valid points after preprocessing, at 224×224 (the {self.config.point_backbone} backbone '
              f'needs at least {need})')
    return ''

  def score_entries(self, entries: Sequence) -> list[SampleScores]:
    """Raw scans (the dataset kind's entries, e.g. from `kind.scan_entry` / `scan_folder`) → scores: each scan's
    files are read and preprocessed exactly as `prepare` does (algorithms.md §1.2/§1.3), then scored in one pass."""
    stored = [self.kind.load_entry(e, False) for e in entries]
    return self.score_stored(stored, [e.name for e in entries])

  def score_files(self, **files) -> SampleScores:
    """One raw scan by its files (`kind.scan_files`: rgb= / xyz= paths, or sample= for Eyecandies).

    Raises UnscorableError for a scan that cannot be scored honestly.
    """
    return _single(self.score_entries([self.kind.scan_entry(**files)])[0])

  def score(self, rgb: np.ndarray | None = None, xyz: np.ndarray | None = None) -> SampleScores:
    """One new scan as arrays read from its raw files: `rgb` uint8 [H, W, 3] and/or organised `xyz` float32
    [H, W, 3] (zeros = missing points). Applies the dataset kind's preprocessing (MVTec: algorithms.md §1.2; Eyecandies:
    `xyz` is the converted cloud, algorithms.md §1.3) and the §1.4 load transforms; maps are 224×224.

    Raises DataError for malformed arrays and UnscorableError for a scan that cannot be scored honestly.
    """
    rgb = None if rgb is None else np.asarray(rgb)
    xyz = None if xyz is None else np.asarray(xyz)
    if rgb is not None and (rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8):
      raise DataError(f'rgb: expected uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}')
    if xyz is not None:
      if xyz.ndim != 3 or xyz.shape[2] != 3 or not np.issubdtype(xyz.dtype, np.floating):
        raise DataError(f'xyz: expected float [H, W, 3], got {xyz.dtype} {xyz.shape}')
      if not np.isfinite(xyz).all():
        raise DataError('xyz: contains NaN or infinite values; mark missing points with (0, 0, 0)')
      xyz = xyz.astype(np.float32)
    if rgb is not None and xyz is not None and rgb.shape[:2] != xyz.shape[:2]:
      raise DataError(f'rgb {rgb.shape[:2]} and xyz {xyz.shape[:2]} differ in size')
    given = [x for x in (rgb, xyz) if x is not None]
    if given and min(given[0].shape[:2]) < mvtec3d.MIN_SIDE:
      raise DataError(f'{given[0].shape[0]}×{given[0].shape[1]} pixels, too small to score (at least '
                      f'{mvtec3d.MIN_SIDE}×{mvtec3d.MIN_SIDE})')
    mods = self.data_modalities
    missing = [m for m, x in (('rgb', rgb), ('xyz', xyz)) if m in mods and x is None]
    if missing:
      raise DataError(f'this detector needs {_needs(missing)} {self._trained_with()}')
    stored = self.kind.preprocess_arrays(rgb if 'rgb' in mods else None, xyz if 'xyz' in mods else None)
    return _single(self.score_stored([stored], ['input'])[0])


def _data_modalities(config: ml_collections.ConfigDict, run: Run, class_name: str) -> tuple[str, ...]:
  """The modalities of the class's prepared data (both when the run uses both, or for Eyecandies)."""
  mods = base.modalities(config)
  if set(mods) == set(io.MODALITIES) or data.get(config.dataset).mask_rgb_by_xyz:  # Eyecandies: always both
    return io.MODALITIES
  return prepared.available_modalities(config.dataset, run.output(class_name, 'prepare'), class_name)


def _map_ranges(evaluate_dir: Path) -> dict[str, tuple[float, float]]:
  """Each row's lowest and highest pixel score over the class's test set (algorithms.md §3.3's min–max), which
  the maps that predict writes are scaled with."""
  with np.load(evaluate_dir / 'evaluation.npz', allow_pickle=False) as z:
    return {name[len('map_'):]: (float(z[name].min()), float(z[name].max()))
            for name in z.files if name.startswith('map_')}


def _stack_inputs(samples: Sequence[dict]) -> dict[str, np.ndarray]:
  """The model inputs (`rgb`, `xyz` at 224) of model-ready samples, stacked."""
  return {k: np.stack([s[k] for s in samples]) for k in ('rgb', 'xyz') if samples and k in samples[0]}


def _needs(modalities: Sequence[str]) -> str:
  what = {'rgb': 'an RGB image (rgb)', 'xyz': 'an organised point cloud (xyz)'}
  return ' and '.join(what[m] for m in modalities)


def _single(scores: SampleScores) -> SampleScores:
  if scores.status != 'ok':
    raise UnscorableError(f'{scores.name}: cannot be scored: {scores.reason}')
  return scores
