"""Evaluation metrics of one class: I-AUROC, P-AUROC and AUPRO exactly as the reference computes them (algorithms.md
§5).

Everything runs in NumPy on the host (curves and areas in float64); these are evaluated once per class and row.
Every metric depends on the scores only through their order, so the global min-max normalisation of the maps
(algorithms.md §3.3, last paragraph) does not change them.
"""
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from scipy import ndimage
from sklearn import metrics as sk_metrics

DEFAULT_LIMITS = (0.3, 0.1, 0.05, 0.01)
DEFAULT_NUM_THRESHOLDS = 100


@dataclasses.dataclass(frozen=True)
class AuproResult:
  """AUPRO of one set of maps.

  values: limit -> normalised area under the PRO curve from FPR 0 to the limit (e.g. `values[0.3]`).
  fpr, pro: [T+1] the PRO curve in ascending FPR, starting at FPR 0 and ending at the prepended point (1, 1).
    For 'exact', interior points of runs of equal PRO are dropped (interpolating the rest gives them back).
  num_thresholds: the `num_thresholds` argument (an int or 'exact').
  num_components: connected ground-truth components pooled over all images.
  """
  values: Mapping[float, float]
  fpr: np.ndarray
  pro: np.ndarray
  num_thresholds: int | str
  num_components: int

  def __getitem__(self, limit: float) -> float:
    return self.values[limit]


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
  """ROC AUC of the image scores [N] against the image labels [N] (1 = anomalous). algorithms.md §5."""
  labels, scores = np.asarray(labels), np.asarray(scores)
  if labels.shape != scores.shape or labels.ndim != 1:
    raise ValueError(f'image_auroc expects labels [N] and scores [N], got {labels.shape} and {scores.shape}')
  _check_finite(scores, 'image scores')
  num_bad = int((labels != 0).sum())
  if num_bad == 0 or num_bad == labels.size:  # sklearn would only warn and return NaN
    raise ValueError(f'image AUROC is undefined: the labels have {num_bad} anomalous and {labels.size - num_bad} '
                     'good images')
  return float(sk_metrics.roc_auc_score(labels != 0, scores))


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
  """ROC AUC over all pixels of all images, background included. algorithms.md §5.

  Equals `sklearn.roc_auc_score(masks.ravel(), maps.ravel())`, but by counting: for each anomalous pixel, the
  normal pixels scored below it plus half of those tied with it. The sum is an exact integer, so the result is
  exact up to the final division, and only the normal scores are sorted.

  Args:
    masks: [N,H,W] ground truth, nonzero = anomalous.
    maps: [N,H,W] anomaly scores.
  """
  masks, maps = _check_pixels(masks, maps, 'pixel_auroc')
  positive = masks.ravel()
  scores = maps.ravel()
  num_pos = int(positive.sum())
  num_neg = positive.size - num_pos
  if num_pos == 0 or num_neg == 0:
    raise ValueError(f'pixel AUROC is undefined: the masks have {num_pos} anomalous and {num_neg} normal pixels')
  neg_sorted = np.sort(scores[~positive])
  pos_scores = scores[positive]
  below = np.searchsorted(neg_sorted, pos_scores, side='left').sum(dtype=np.int64)
  below_or_tied = np.searchsorted(neg_sorted, pos_scores, side='right').sum(dtype=np.int64)
  return float((below + below_or_tied) / (2 * num_pos * num_neg))


def aupro(masks: np.ndarray, maps: np.ndarray, limits: Sequence[float] = DEFAULT_LIMITS,
          num_thresholds: int | Literal['exact'] = DEFAULT_NUM_THRESHOLDS) -> AuproResult:
  """Area under the per-region-overlap curve up to each FPR limit, divided by the limit. algorithms.md §5.

  `num_thresholds=100` replicates the official MVTec 3D-AD evaluation (thresholds at 100 evenly spaced positions
  of the sorted OK scores); any other int changes that count. `'exact'` puts a threshold at every distinct OK
  score (the last position of each value, so FPR is the true fraction of OK pixels scored above it): the full curve.

  Vectorised: the component pixels of all components are sorted once (descending), each weighted by 1/(its
  component's size); the cumulative weight of the pixels scored > threshold (one `searchsorted` for all
  thresholds) is the sum over components of the fraction above it. The result matches the per-threshold loop to
  float64 rounding (~1e-12).

  Args:
    masks: [N,H,W] ground truth, nonzero = anomalous. Components are 8-connected within each image.
    maps: [N,H,W] anomaly scores (no NaN).
    limits: FPR integration limits in (0, 1].
    num_thresholds: a positive int, or 'exact'.

  Raises:
    ValueError: shapes differ; NaN scores; invalid limits or num_thresholds; no anomalous pixel (AUPRO is
      undefined: the reference would divide by zero components) or no OK pixel.
  """
  masks, maps = _check_pixels(masks, maps, 'aupro')
  limits = tuple(float(limit) for limit in limits)
  if not limits or not all(0.0 < limit <= 1.0 for limit in limits):
    raise ValueError(f'aupro limits must be in (0, 1], got {limits}')
  # algorithms.md §5 step 1: 8-connected components of each image; no connectivity across the image axis, so the
  # component ids are already pooled over images.
  structure = np.zeros((3, 3, 3), dtype=bool)
  structure[1] = True
  components, num_components = ndimage.label(masks, structure=structure)
  components = components.ravel()
  if num_components == 0:
    raise ValueError('AUPRO is undefined: the masks contain no anomalous pixel')
  # Sorting and comparing in the maps' own float type (float32 or wider) gives the same order, thresholds and
  # counts as float64, at half the sort time.
  scores = maps.ravel().astype(np.result_type(maps.dtype, np.float32), copy=False)
  # algorithms.md §5 step 2.
  ok_sorted = np.sort(scores[components == 0])
  num_ok = ok_sorted.size
  if num_ok == 0:
    raise ValueError('AUPRO is undefined: the masks contain no OK (label 0) pixel')
  positions = _threshold_positions(ok_sorted, num_thresholds)
  # algorithms.md §5 steps 3-4.
  thresholds = ok_sorted[positions]
  fpr = 1.0 - (positions + 1) / num_ok
  # algorithms.md §5 step 5: PRO(t) = (1/C) sum_c #{x in c: x > t} / |c|, summed from the highest score down so that
  # PRO is exactly 0 above every component pixel; exactly 1 below all of them.
  in_component = components > 0
  component_ids = components[in_component]
  component_scores = scores[in_component]
  order = np.argsort(component_scores, kind='stable')[::-1]
  weights = 1.0 / np.bincount(component_ids)[component_ids[order]]
  above_weight = np.concatenate([[0.0], np.cumsum(weights)])
  num_above = np.searchsorted(-component_scores[order], -thresholds, side='left')
  pro = np.where(num_above == order.size, 1.0, above_weight[num_above] / num_components)
  # algorithms.md §5 step 6: prepend (1, 1), then ascending FPR.
  fpr = np.concatenate([[1.0], fpr])[::-1]
  pro = np.concatenate([[1.0], pro])[::-1]
  values = {limit: _trapezoid(fpr, pro, limit) / limit for limit in limits}
  if num_thresholds == 'exact':
    # Millions of points: keep only the ends of each run of equal PRO. Linear interpolation of the kept points
    # reproduces every dropped one, so the stored curve is the same curve at a few points per PRO step.
    keep = np.ones(fpr.size, dtype=bool)
    keep[1:-1] = (pro[1:-1] != pro[:-2]) | (pro[1:-1] != pro[2:])
    fpr, pro = fpr[keep], pro[keep]
  return AuproResult(values=values, fpr=fpr, pro=pro, num_thresholds=num_thresholds,
                     num_components=int(num_components))


def round4(value: float) -> float:
  """Per-class values are reported rounded to 4 decimals (algorithms.md §5)."""
  return round(float(value), 4)


def dataset_mean(values: Sequence[float] | Mapping[str, float]) -> float:
  """Unweighted mean over classes of the (already rounded) per-class values; NaN skipped as pandas does. algorithms.md
  §5."""
  if isinstance(values, Mapping):
    values = list(values.values())
  values = np.asarray(values, dtype=np.float64)
  finite = values[~np.isnan(values)]
  return float(finite.mean()) if finite.size else float('nan')


def _threshold_positions(ok_sorted: np.ndarray, num_thresholds: int | str) -> np.ndarray:
  """Indices into the sorted OK scores at which the thresholds are taken (algorithms.md §5 step 3)."""
  num_ok = ok_sorted.size
  if num_thresholds == 'exact':
    last_of_value = np.flatnonzero(ok_sorted[1:] != ok_sorted[:-1])
    return np.append(last_of_value, num_ok - 1)
  if isinstance(num_thresholds, (bool, np.bool_)) or not isinstance(num_thresholds, (int, np.integer)) \
      or num_thresholds < 1:
    raise ValueError(f"aupro num_thresholds must be a positive int or 'exact', got {num_thresholds!r}")
  return np.linspace(0, num_ok - 1, int(num_thresholds)).astype(int)


def _trapezoid(x: np.ndarray, y: np.ndarray, limit: float) -> float:
  """Trapezoid area of y(x) over [x[0], limit], interpolating linearly at the limit (algorithms.md §5 step 7).

  `x` is ascending and spans [0, 1]. algorithms.md §5 drops non-finite points; with NaN-free maps and at least one
  component and one OK pixel (checked by the caller) every point is finite, so there is nothing to drop.
  """
  end = int(np.searchsorted(x, limit, side='right'))
  area = float(np.sum(0.5 * (y[1:end] + y[:end - 1]) * np.diff(x[:end])))
  if x[end - 1] != limit:
    x0, x1, y0, y1 = x[end - 1], x[end], y[end - 1], y[end]
    y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
    area += 0.5 * (y_limit + y0) * (limit - x0)
  return area


def _check_pixels(masks: np.ndarray, maps: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
  masks, maps = np.asarray(masks), np.asarray(maps)
  if masks.shape != maps.shape or masks.ndim != 3:
    raise ValueError(f'{what} expects masks [N,H,W] and maps [N,H,W] of the same shape, '
                     f'got masks {masks.shape} and maps {maps.shape}')
  _check_finite(maps, 'anomaly maps', allow_inf=True)
  return masks != 0, maps


def _check_finite(scores: np.ndarray, what: str, allow_inf: bool = False) -> None:
  bad = np.isnan(scores) if allow_inf else ~np.isfinite(scores)
  if bad.any():
    raise ValueError(f'{what} contain {int(bad.sum())} {"NaN" if allow_inf else "non-finite"} values')


def decision_metrics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float | int]:
  """What an inspection line sees at a fixed threshold: labels [N] (1 = defective) against decisions [N] (1 =
  defect) → counts and rates. `false_reject_rate` is the share of good parts called defective, `escape_rate` the
  share of defective parts let through (1 − recall); a rate with nothing to count (no good, or no defective,
  parts) is NaN, and so are precision without any part called defective and F1 without either."""
  labels, predicted = np.asarray(labels) != 0, np.asarray(predicted) != 0
  if labels.shape != predicted.shape or labels.ndim != 1:
    raise ValueError(f'decision_metrics expects labels [N] and decisions [N], got {labels.shape}, {predicted.shape}')
  tp, fp = int((labels & predicted).sum()), int((~labels & predicted).sum())
  fn, tn = int((labels & ~predicted).sum()), int((~labels & ~predicted).sum())
  ratio = lambda a, b: a / b if b else float('nan')
  precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
  f1 = ratio(2 * tp, 2 * tp + fp + fn) if tp + fp and tp + fn else float('nan')
  return {'TP': tp, 'FP': fp, 'TN': tn, 'FN': fn, 'precision': precision, 'recall': recall, 'F1': f1,
          'false_reject_rate': ratio(fp, fp + tn), 'escape_rate': ratio(fn, tp + fn)}
