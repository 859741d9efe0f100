"""The one way stored scans become scores, maps and decisions: the evaluation, predict, a bundle and the server
all call `score_stored`.

  stored scans (`kind.Stored`: what `prepare` stores, and what `kind.load_entry` makes of a new scan's files)
    → `transforms.model_input` (algorithms.md §1.4) and the checks that a scan can be scored honestly
    → features (`Model.features`: the backbones; the evaluation passes the ones its extract stage cached)
    → the method's scorer (`Model.scores`) → per row, raw image scores and 224×224 maps
    → with a calibration, the decision of the main row (`g2sf_jax.decisions`): label, normalised score, the mask
      and regions at the scan's own resolution.

A `Model` is a trained detector in this process (`g2sf_jax.detector.Detector`) or an exported one
(`g2sf_jax.deploy.Bundle`); both give the same numbers because this function is all that differs between them.
"""
import dataclasses
from typing import Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from g2sf_jax import decisions, features, io
from g2sf_jax.calibration import Calibration
from g2sf_jax.data import kind, mvtec3d, transforms
from g2sf_jax.errors import DataError, UnscorableError


class RowScores(NamedTuple):
  """One row's scores of B samples: image [B] float32, maps [B, 224, 224] float32 (before any test-set min–max).

  `pro_maps` [B, 224, 224]: where a method's reference code computes AUPRO on other maps than the pixel AUROC
  (CFM normalises them differently), those; None = `maps` for both.
  """
  image: np.ndarray
  maps: np.ndarray
  pro_maps: np.ndarray | None = None


def rows_from(out: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, RowScores]:
  """`Scorer.apply`'s outputs (fetched to the host) as `{row: RowScores}`."""
  return {row: RowScores(np.asarray(o['image'], np.float32), np.asarray(o['maps'], np.float32),
                         None if o.get('pro_maps') is None else np.asarray(o['pro_maps'], np.float32))
          for row, o in out.items()}


class Model(Protocol):
  """What scoring needs from a trained detector of one class."""
  rows: tuple[str, ...]             # the result rows, in table order
  main_row: str                     # the row whose maps and decisions predict writes
  modalities: tuple[str, ...]       # what the scorer consumes
  data_modalities: tuple[str, ...]  # what preprocessing uses (a class prepared from both, scored on one)
  needs: tuple[str, ...]            # feature kinds (`base.FEATURE_KINDS`)
  kind: kind.DatasetKind
  batch_size: int
  min_points: int                   # a cloud with fewer valid points cannot be scored honestly
  calibration: Calibration | None
  unit_mm: float                    # one xyz unit in millimetres
  clean: bool                       # the run's `clean_scans`: preprocessing cleans the clouds

  def features(self, inputs: Sequence[Mapping[str, np.ndarray]], kinds: Sequence[str]) -> dict[str, np.ndarray]:
    """Model inputs (`transforms.model_input` of each scan) → the feature `kinds`, stacked."""

  def scores(self, feats: Mapping[str, np.ndarray]) -> dict[str, RowScores]:
    """Features of a batch → `{row: RowScores}`."""


@dataclasses.dataclass(frozen=True)
class ScanResult:
  """One scan: its raw image score and 224×224 map per row, and with a calibration the main row's decision.

  status 'unscorable' (with the reason, no scores, no decision) for a scan that cannot be scored honestly;
  problems: what preprocessing worked around (e.g. 'few_border_points: … background plane not removed').
  """
  image: dict[str, float]
  maps: dict[str, np.ndarray]
  name: str = ''
  status: str = 'ok'
  reason: str = ''
  problems: tuple[str, ...] = ()
  decision: decisions.Decision | None = None
  pro_maps: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # rows with own AUPRO maps (CFM)

  @property
  def label(self) -> str:
    """'good' or 'defect' (with a calibration), or 'unscorable'."""
    return 'unscorable' if self.status != 'ok' else (self.decision.label if self.decision else '')


def record(result: ScanResult, main_row: str) -> dict:
  """The JSON fields of one scan, the same wherever a result is reported (predict's output and scores.json, the
  server's answers): scan, status, label, reason, problems, row, image_scores (raw, per row) and with a decision
  its `Decision.summary` (score, raw_score, threshold, defect_pixels, regions)."""
  out = {'scan': result.name, 'status': result.status, 'label': result.label, 'reason': result.reason,
         'problems': list(result.problems), 'row': main_row, 'image_scores': result.image}
  if result.decision is not None:
    out.update(result.decision.summary())
  return out


def _needs(modalities: Sequence[str]) -> str:
  what = {'rgb': 'an RGB image (rgb)', 'xyz': 'an organised point cloud (xyz)'}
  return ' and '.join(what[m] for m in modalities)


def trained_with(model: Model) -> str:
  mods = '+'.join(model.modalities)
  if tuple(model.data_modalities) == tuple(model.modalities):
    return f'(it was trained with modalities {mods!r})'
  return (f'(it scores {mods!r}, but its class was prepared from {"+".join(model.data_modalities)!r} files, which '
          'preprocessing uses together)')


def _unscorable_input(model: Model, sample: Mapping[str, np.ndarray]) -> str:
  if 'xyz' not in sample:
    return ''
  valid = int(transforms.valid_mask(sample['xyz']).sum())
  if valid < model.min_points:
    return f'{valid} valid points after preprocessing, at 224×224 (the point backbone needs at least ' \
           f'{model.min_points})'
  return ''


def score_stored(model: Model, stored: Sequence[kind.Stored], names: Sequence[str],
                 feats: Mapping[str, np.ndarray] | None = None, threshold: float = 0.5,
                 decide: bool = True) -> list[ScanResult]:
  """Preprocessed scans → one `ScanResult` each, in batches of `model.batch_size`.

  `feats`: the scans' features when they are already known (the evaluation's cache), indexed like `stored`;
  kinds the model needs beyond them are computed. `threshold`: the normalised score from which a scan or a pixel
  is `defect` (0.5: the calibrated threshold). A scan with too few valid points for the point backbone, whose point
  features come out all zero (e.g. all points coincide, so FPFH has no spacing) or whose scores are not finite is
  `unscorable`, with the reason, and never scored.
  """
  if not 0 < threshold < 1:
    raise DataError(f'threshold {threshold}: expected a normalised score in (0, 1)')
  out: list[ScanResult | None] = [None] * len(stored)
  todo = []
  for i, (st, name) in enumerate(zip(stored, names)):
    missing = [m for m in model.data_modalities if getattr(st, m) is None]
    if missing:
      raise DataError(f'{name}: this detector needs {_needs(missing)} {trained_with(model)}')
    sample = transforms.model_input({m: getattr(st, m) for m in model.data_modalities}, model.kind.mask_rgb_by_xyz)
    sample = {k: v for k, v in sample.items() if k in model.modalities or k not in io.MODALITIES}
    reason = _unscorable_input(model, sample)
    if reason:
      out[i] = ScanResult({}, {}, name, 'unscorable', reason, st.problems)
    else:
      todo.append((i, sample))
  for start in range(0, len(todo), model.batch_size):
    batch = todo[start:start + model.batch_size]
    given = {} if feats is None else {k: np.asarray(v)[[i for i, _ in batch]] for k, v in feats.items()
                                      if k in model.needs}
    missing = [k for k in model.needs if k not in given]
    if missing:
      given.update(model.features([s for _, s in batch], missing))
    ok = np.ones(len(batch), bool)
    if 'pcd' in given:
      ok = ~features.background_mask(given['pcd']).all(axis=(1, 2))
    for (i, _), good in zip(batch, ok):
      if not good:
        out[i] = ScanResult({}, {}, names[i], 'unscorable', 'the point features are all zero (a degenerate cloud, '
                            'e.g. all points coincide so FPFH has no point spacing)', stored[i].problems)
    if not ok.any():
      continue
    rows = model.scores({k: v[ok] for k, v in given.items()})
    for j, (i, _) in enumerate(x for x, good in zip(batch, ok) if good):
      out[i] = _result(model, stored[i], names[i], {row: (r.image[j], r.maps[j]) for row, r in rows.items()},
                       threshold, decide)
      if out[i].status == 'ok':
        out[i] = dataclasses.replace(out[i], pro_maps={row: r.pro_maps[j] for row, r in rows.items()
                                                       if r.pro_maps is not None})
  return out


def _result(model: Model, stored: kind.Stored, name: str, rows: Mapping[str, tuple], threshold: float,
            decide: bool) -> ScanResult:
  bad = [row for row, (image, maps) in rows.items() if not (np.isfinite(image) and np.isfinite(maps).all())]
  if bad:  # never reported as a score
    return ScanResult({}, {}, name, 'unscorable', f'the {", ".join(bad)} scores came out NaN or infinite (damaged '
                      'inputs or model)', stored.problems)
  image = {row: float(v[0]) for row, v in rows.items()}
  maps = {row: np.asarray(v[1], np.float32) for row, v in rows.items()}
  decision = None
  if decide and model.calibration is not None:
    decision = decisions.decide(stored, image[model.main_row], maps[model.main_row],
                                model.calibration.rows[model.main_row], threshold, model.unit_mm)
  return ScanResult(image, maps, name, 'ok', '', stored.problems, decision)


def score_entries(model: Model, entries: Sequence, threshold: float = 0.5,
                  max_pixels: int = io.MAX_PIXELS) -> list[ScanResult]:
  """Raw scans (the dataset kind's entries, e.g. from `kind.scan_entry` / `scan_folder`): each scan's files are
  read and preprocessed exactly as `prepare` does (algorithms.md §1.2/§1.3), then scored in one pass."""
  stored = [model.kind.load_entry(e, False, max_pixels, model.clean) for e in entries]
  return score_stored(model, stored, [e.name for e in entries], threshold=threshold)


def single(result: ScanResult) -> ScanResult:
  """The result of a scan scored alone; UnscorableError if it could not be scored."""
  if result.status != 'ok':
    raise UnscorableError(f'{result.name}: cannot be scored: {result.reason}')
  return result


def stored_from_arrays(model: Model, rgb: np.ndarray | None = None, xyz: np.ndarray | None = None) -> kind.Stored:
  """One new scan as arrays read from its raw files — `rgb` uint8 [H, W, 3] and/or organised `xyz` float32
  [H, W, 3] (zeros = missing points) — checked and preprocessed with the dataset kind's preprocessing (MVTec:
  algorithms.md §1.2; Eyecandies: `xyz` is the converted cloud, §1.3)."""
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
  mods = model.data_modalities
  missing = [m for m, x in (('rgb', rgb), ('xyz', xyz)) if m in mods and x is None]
  if missing:
    raise DataError(f'this detector needs {_needs(missing)} {trained_with(model)}')
  return model.kind.preprocess_arrays(rgb if 'rgb' in mods else None, xyz if 'xyz' in mods else None, model.clean)


class Scoring:
  """The ways into `score_stored` for a `Model` (`Detector`, `deploy.Bundle`): arrays, files, entries, stored scans.
  """

  def score_stored(self, stored: Sequence[kind.Stored], names: Sequence[str],
                   threshold: float = 0.5) -> list[ScanResult]:
    """Preprocessed scans (what `prepare` stores, or `kind.load_entry` returns) → results (`scoring`)."""
    return score_stored(self, stored, names, threshold=threshold)

  def score_entries(self, entries: Sequence, threshold: float = 0.5,
                    max_pixels: int = io.MAX_PIXELS) -> list[ScanResult]:
    """Raw scans (the dataset kind's entries, e.g. from `kind.scan_entry` / `scan_folder`)."""
    return score_entries(self, entries, threshold, max_pixels)

  def score_files(self, threshold: float = 0.5, **files) -> ScanResult:
    """One raw scan by its files (`kind.scan_files`: rgb= / xyz= paths, or sample= for Eyecandies).

    Raises UnscorableError for a scan that cannot be scored honestly.
    """
    return single(self.score_entries([self.kind.scan_entry(**files)], threshold)[0])

  def score(self, rgb: np.ndarray | None = None, xyz: np.ndarray | None = None,
            threshold: float = 0.5) -> ScanResult:
    """One new scan as arrays read from its raw files (`stored_from_arrays`).

    Raises DataError for malformed arrays and UnscorableError for a scan that cannot be scored honestly.
    """
    stored = stored_from_arrays(self, rgb, xyz)
    return single(score_stored(self, [stored], ['input'], threshold=threshold)[0])
