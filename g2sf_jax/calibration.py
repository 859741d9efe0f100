"""Calibration: where each row's scores turn from good to defect, fitted on scans the method did not train on.

Raw scores are distances in each method's own units, so a number alone says nothing. Calibration fixes, per row, an
image threshold and a pixel threshold from the validation scans (`fit`), and maps raw scores to a normalised score
that reads the same for every method, class and run (`Threshold.normalise`): a logistic curve through 0.5 at the
threshold, with the median good validation score at 0.1. It is monotone in the raw score, so every AUROC is
unchanged; a scan is `defect` when its normalised score is at least 0.5 (or the `threshold` a caller chooses).

Rules (`config.calibration.rule`):
  good_quantile  the threshold sits above the good scans' `quantile`-quantile by `margin` times the distance from
                 their median to that quantile: thr = q + margin·(q − median). Needs only good scans. For pixels,
                 each good scan contributes its highest pixel score, so a good scan rarely gets any defect pixel.
  f1             the threshold that maximises F1 over labelled validation scans (needs defective ones too); for
                 pixels over the pixels of the scans with masks (else the good_quantile rule).
  auto           f1 where the validation scans include defects, else good_quantile.
"""
import dataclasses
import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np

from g2sf_jax import io
from g2sf_jax.errors import CorruptOutputError, DataError, require_finite

RULES = ('auto', 'good_quantile', 'f1')
FILE = 'calibration.json'
_MEDIAN_AT = 0.1  # the normalised score of the median good validation scan
_MIN_SPREAD = 0.1  # the least margin and logistic spread, as a share of the good median: one good scan is not 0
ADVISED_GOOD = 10  # fewer good validation scans than this make rough thresholds; the report says so


@dataclasses.dataclass(frozen=True)
class Threshold:
  """A raw-score threshold and the scale of the logistic that normalises scores around it."""
  value: float
  scale: float

  def normalise(self, raw: np.ndarray | float) -> np.ndarray:
    """Raw scores → normalised scores in (0, 1): 0.5 at the threshold, monotone, float32."""
    z = (np.asarray(raw, np.float64) - self.value) / self.scale
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # the logistic, without overflow

  def raw_at(self, normalised: float) -> float:
    """The raw score whose normalised score is `normalised` (0 < normalised < 1): how a caller's threshold on the
    normalised scale reads in this row's own units."""
    return self.value + self.scale * math.log(normalised / (1 - normalised))


def _least_spread(good: np.ndarray) -> float:
  """The spread below which good scores are taken to vary no less: a few good scans (or one) have almost none."""
  return max(_MIN_SPREAD * abs(float(np.median(good))), 1e-6)


def _threshold(value: float, good: np.ndarray) -> Threshold:
  """The threshold `value`, scaled so that the median of `good` normalises to `_MEDIAN_AT` (or lower, where the
  good scores hardly spread)."""
  spread = max(value - float(np.median(good)), _least_spread(good))
  return Threshold(float(value), spread / math.log((1 - _MEDIAN_AT) / _MEDIAN_AT))


def good_quantile(good: np.ndarray, quantile: float, margin: float) -> float:
  """q + margin·(q − median) of the good scores, the distance at least `_MIN_SPREAD` of the median."""
  q = float(np.quantile(good, quantile))
  return q + margin * max(q - float(np.median(good)), _least_spread(good))


def f1_optimal(scores: np.ndarray, labels: np.ndarray) -> float:
  """The threshold (a midpoint between two distinct scores) that maximises F1 of `scores ≥ threshold` against
  binary `labels`; ties keep the lowest threshold."""
  order = np.argsort(-scores, kind='stable')
  s, y = scores[order], labels[order].astype(np.int64)
  tp = np.cumsum(y)
  fp = np.cumsum(1 - y)
  positives = max(int(y.sum()), 1)
  last = np.r_[s[1:] != s[:-1], True]  # cut only between distinct scores
  f1 = np.where(last, 2 * tp / (tp + fp + positives), -1.0)
  best = int(np.argmax(f1))
  below = s[best + 1] if best + 1 < len(s) else s[best] - 1.0
  return float((s[best] + below) / 2)


@dataclasses.dataclass(frozen=True)
class RowCalibration:
  """One row's image and pixel thresholds, and what they were fitted on."""
  image: Threshold
  pixel: Threshold
  rule: str
  good: int
  defect: int

  def is_defect(self, raw_image: np.ndarray | float, threshold: float = 0.5) -> np.ndarray:
    """The image decision: the normalised score at least `threshold` (0.5: the calibrated threshold)."""
    return self.image.normalise(raw_image) >= threshold


@dataclasses.dataclass(frozen=True)
class Calibration:
  """Every row's thresholds for one class; `source` says which scans they come from."""
  rows: dict[str, RowCalibration]
  source: str

  def save(self, path: str | Path) -> None:
    with io.atomic_write(path, 'w') as f:
      json.dump({'source': self.source, 'rows': {r: dataclasses.asdict(c) for r, c in self.rows.items()}}, f,
                indent=1, sort_keys=True)

  @classmethod
  def load(cls, path: str | Path) -> 'Calibration':
    try:
      raw = json.loads(Path(path).read_text())
      rows = {r: RowCalibration(Threshold(**c['image']), Threshold(**c['pixel']), c['rule'], int(c['good']),
                                int(c['defect'])) for r, c in raw['rows'].items()}
      return cls(rows, str(raw['source']))
    except FileNotFoundError:
      raise
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise CorruptOutputError(f'{path}: not a calibration file ({e.__class__.__name__}: {e})') from None


def fit(scores: Mapping[str, tuple[np.ndarray, np.ndarray]], labels: np.ndarray, masks: np.ndarray | None,
        rule: str = 'auto', quantile: float = 0.99, margin: float = 0.1, source: str = 'validation') -> Calibration:
  """Thresholds per row from validation scans.

  scores: {row: (image [N], maps [N, 224, 224])}; labels [N] (1 = defective); masks bool [N, 224, 224] of the
  defective scans that have ground truth (rows of good scans all False), or None when no scan has a mask.
  """
  labels = np.asarray(labels).astype(bool)
  if not (~labels).any():
    raise DataError('calibration needs good validation scans; none were found')
  if rule not in RULES:
    raise DataError(f'calibration rule {rule!r}: expected one of {RULES}')
  chosen = ('f1' if labels.any() else 'good_quantile') if rule == 'auto' else rule
  if chosen == 'f1' and not labels.any():
    raise DataError('calibration.rule=f1 needs defective validation scans; there are only good ones (use '
                    'good_quantile)')
  out = {}
  for row, (image, maps) in scores.items():
    image, maps = np.asarray(image, np.float64), np.asarray(maps, np.float64)
    require_finite(f'the {row} validation scores', image, maps)
    good_image = image[~labels]
    good_pixel = maps[~labels].reshape((~labels).sum(), -1).max(axis=1)  # each good scan's highest pixel
    if chosen == 'f1':
      image_value = f1_optimal(image, labels)
      pixel_value = (f1_optimal(maps.ravel(), masks.ravel()) if masks is not None and masks.any()
                     else good_quantile(good_pixel, quantile, margin))
    else:
      image_value = good_quantile(good_image, quantile, margin)
      pixel_value = good_quantile(good_pixel, quantile, margin)
    out[row] = RowCalibration(_threshold(image_value, good_image),
                              _threshold(pixel_value, maps[~labels].ravel()), chosen, int((~labels).sum()),
                              int(labels.sum()))
  return Calibration(out, source)
