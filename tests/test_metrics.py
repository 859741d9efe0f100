"""Metrics against hand-computed cases, sklearn, and a plain per-threshold loop written here (algorithms.md §5)."""
import bisect

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from g2sf_jax import metrics

LIMITS = (0.3, 0.1, 0.05, 0.01)


def reference_aupro(masks, maps, limits, num_thresholds):
  """A deliberately plain transliteration of algorithms.md §5: a loop over thresholds, then over components."""
  components, ok_scores = [], []
  for mask, score in zip(masks, maps):
    labelled, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    ok_scores.extend(score[labelled == 0].tolist())
    for k in range(1, n + 1):
      components.append(score[labelled == k].astype(np.float64))
  ok_sorted = sorted(ok_scores)
  num_ok = len(ok_sorted)
  if num_thresholds == 'exact':
    thresholds = sorted(set(ok_sorted))
    ok_array = np.array(ok_sorted)
    fprs_at = [np.count_nonzero(ok_array > t) / num_ok for t in thresholds]
  else:
    positions = np.linspace(0, num_ok - 1, num=num_thresholds, dtype=int)
    thresholds = [ok_sorted[p] for p in positions]
    fprs_at = [1.0 - (p + 1) / num_ok for p in positions]
  fprs, pros = [1.0], [1.0]
  for t, fpr in zip(thresholds, fprs_at):
    pro = 0.0
    for comp in components:
      pro += np.count_nonzero(comp > t) / comp.size
    fprs.append(fpr)
    pros.append(pro / len(components))
  fprs, pros = fprs[::-1], pros[::-1]
  values = {}
  for limit in limits:
    x, y = list(fprs), list(pros)
    correction = 0.0
    if limit not in x:
      ins = bisect.bisect(x, limit)
      y_at = y[ins - 1] + (y[ins] - y[ins - 1]) * (limit - x[ins - 1]) / (x[ins] - x[ins - 1])
      correction = 0.5 * (y_at + y[ins - 1]) * (limit - x[ins - 1])
    keep = [i for i in range(len(x)) if x[i] <= limit]
    area = sum(0.5 * (y[keep[i]] + y[keep[i - 1]]) * (x[keep[i]] - x[keep[i - 1]]) for i in range(1, len(keep)))
    values[limit] = (area + correction) / limit
  return values, np.array(fprs), np.array(pros)


def each_near_one_of(values, candidates, atol=1e-12):
  return all(np.min(np.abs(np.asarray(candidates) - v)) <= atol for v in values)


def assert_same_curve(res, fpr, pro):
  """The stored curve passes through every expected point ('exact' stores only the ends of flat runs)."""
  fpr, pro = np.asarray(fpr), np.asarray(pro)
  assert res.fpr.size <= fpr.size and each_near_one_of(res.fpr, fpr)
  np.testing.assert_allclose(np.interp(fpr, res.fpr, res.pro), pro, atol=1e-12)


def random_case(seed, n=6, size=24, quantise=None):
  """Maps with blobs that score higher on average, and a few diagonal-only touching components."""
  rng = np.random.default_rng(seed)
  masks = np.zeros((n, size, size), dtype=bool)
  yy, xx = np.mgrid[:size, :size]
  for i in range(n - 1):
    for _ in range(rng.integers(1, 4)):
      cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.uniform(1.0, 4.0)
      masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
  masks[0, 0, 0] = masks[0, 1, 1] = True
  maps = rng.normal(size=masks.shape) + 1.5 * masks * rng.uniform(size=masks.shape)
  if quantise:
    maps = np.round(maps * quantise) / quantise
  return masks, maps


def test_single_square_step_map_by_hand():
  # 4x4 image, a 2x2 anomalous square; OK scores 0..11 (K=12), component scores 2.5, 5.5, 8.5, 20.
  mask = np.zeros((1, 4, 4), dtype=bool)
  mask[0, 1:3, 1:3] = True
  score = np.zeros((1, 4, 4))
  score[~mask] = np.arange(12)
  score[mask] = [2.5, 5.5, 8.5, 20.0]
  # 'exact': threshold v = 0..11 has FPR (11-v)/12 and PRO = #(component > v)/4.
  res = metrics.aupro(mask, score, limits=(0.3, 1.0), num_thresholds='exact')
  v = np.arange(12)[::-1]
  assert_same_curve(res, np.append((11 - v) / 12, 1.0),
                    np.append([(np.array([2.5, 5.5, 8.5, 20.0]) > t).mean() for t in v], 1.0))
  # Runs of equal PRO keep their ends only: FPR 0, 2/12 | 3/12, 5/12 | 6/12, 8/12 | 9/12, 1.
  np.testing.assert_allclose(res.fpr, np.array([0, 2, 3, 5, 6, 8, 9, 12]) / 12)
  # Area to 0.3: 1/12·(.25 + .25 + .375) + (0.3 − 3/12)·0.5.
  assert res[0.3] == pytest.approx((0.875 / 12 + 0.05 * 0.5) / 0.3, abs=1e-12)
  # 4 thresholds at positions int(linspace(0, 11, 4)) = 0, 3, 7, 11 -> points (0,.25) (4/12,.5) (8/12,.75)
  # (11/12, 1) (1, 1); PRO at 0.3 interpolates to .25 + .25·0.3/(1/3) = .475.
  res = metrics.aupro(mask, score, limits=(0.3,), num_thresholds=4)
  np.testing.assert_allclose(res.fpr, [0, 4 / 12, 8 / 12, 11 / 12, 1])
  np.testing.assert_allclose(res.pro, [0.25, 0.5, 0.75, 1, 1])
  assert res[0.3] == pytest.approx(0.5 * (0.25 + 0.475) * 0.3 / 0.3, abs=1e-12)
  assert res.num_components == 1


def test_stripes_known_pro():
  # Four 1-pixel-wide vertical stripes (separated by background columns) of constant scores 0.2, 0.4, 0.6, 0.8;
  # background scores uniform in [0, 1). PRO(t) = #(stripe score > t)/4 at every threshold.
  h, w = 40, 9
  mask = np.zeros((1, h, w), dtype=bool)
  score = np.zeros((1, h, w))
  rng = np.random.default_rng(0)
  score[0] = rng.uniform(size=(h, w))
  stripe_scores = [0.2, 0.4, 0.6, 0.8]
  for j, s in zip((1, 3, 5, 7), stripe_scores):
    mask[0, :, j] = True
    score[0, :, j] = s
  res = metrics.aupro(mask, score, num_thresholds='exact')
  assert res.num_components == 4
  ok = np.sort(score[~mask])
  expected_pro = [np.mean(np.array(stripe_scores) > t) for t in ok[::-1]]
  assert_same_curve(res, [np.mean(ok > t) for t in ok[::-1]] + [1.0], expected_pro + [1.0])
  assert res.fpr.size == 2 * 5  # PRO takes 5 values; each run keeps its two ends (the last one ends at (1, 1))


def test_eight_connectivity():
  # A 1-pixel and a 3-pixel part touching only diagonally are one component of 4 pixels (8-connectivity).
  mask = np.zeros((1, 6, 6), dtype=bool)
  mask[0, 1, 1] = True
  mask[0, 2, 2:5] = True
  score = np.linspace(0, 1, 36).reshape(1, 6, 6)
  score[mask] = [2.0, 0.0, 0.0, 0.0]
  res = metrics.aupro(mask, score, num_thresholds='exact')
  assert res.num_components == 1
  # At FPR 0 (t = max OK score < 2) one pixel of the single 4-pixel component is above: PRO 0.25 (two
  # 4-connected components would give (1 + 0)/2 = 0.5).
  assert res.fpr[0] == 0 and res.pro[0] == pytest.approx(0.25)


@pytest.mark.parametrize('num_thresholds', [100, 99, 'exact'])
@pytest.mark.parametrize('quantise', [None, 8])
def test_matches_plain_loop(num_thresholds, quantise):
  masks, maps = random_case(seed=1, quantise=quantise)
  res = metrics.aupro(masks, maps, limits=LIMITS, num_thresholds=num_thresholds)
  values, fpr, pro = reference_aupro(masks, maps, LIMITS, num_thresholds)
  if num_thresholds == 'exact':
    assert_same_curve(res, fpr, pro)
  else:
    np.testing.assert_allclose(res.fpr, fpr, atol=1e-12)
    np.testing.assert_allclose(res.pro, pro, atol=1e-12)
  for limit in LIMITS:
    assert res[limit] == pytest.approx(values[limit], abs=1e-12)


def test_monotone_rescaling_invariance():
  masks, maps = random_case(seed=2, quantise=16)  # multiples of 1/16: 2x+3 is exact, exp keeps order
  for num_thresholds in (100, 'exact'):
    base = metrics.aupro(masks, maps, num_thresholds=num_thresholds)
    for transformed in (2.0 * maps + 3.0, np.exp(maps), (maps - maps.min()) / (maps.max() - maps.min())):
      other = metrics.aupro(masks, transformed, num_thresholds=num_thresholds)
      assert other.values == base.values
      np.testing.assert_array_equal(other.pro, base.pro)
  assert metrics.pixel_auroc(masks, np.exp(maps)) == metrics.pixel_auroc(masks, maps)


def test_threshold_variants():
  masks, maps = random_case(seed=3)
  r100 = metrics.aupro(masks, maps, num_thresholds=100)
  r99 = metrics.aupro(masks, maps, num_thresholds=99)
  exact = metrics.aupro(masks, maps, num_thresholds='exact')
  num_ok = int((~masks).sum())
  assert len(r100.fpr) == 101 and len(r99.fpr) == 100 and 101 < len(exact.fpr) < num_ok + 1
  # All OK scores are distinct: the exact curve has a point at every FPR k/K.
  assert each_near_one_of(exact.fpr, np.arange(num_ok + 1) / num_ok)
  assert r100[0.3] != r99[0.3] and r100[0.05] != r99[0.05] and exact[0.01] != r100[0.01]
  # All three sample the same curve: close at 30 %.
  assert abs(r100[0.3] - exact[0.3]) < 0.01 and abs(r99[0.3] - exact[0.3]) < 0.01
  # algorithms.md §5 ⚠: with 100 thresholds AUPRO@1% only sees the points at FPR 0 and the next one (≈ 1/99 > 0.01).
  assert r100.fpr[0] == 0 and 0.01 < r100.fpr[1] < 1 / 99 + 2 / num_ok
  pro_at = r100.pro[0] + (r100.pro[1] - r100.pro[0]) * 0.01 / r100.fpr[1]
  assert r100[0.01] == pytest.approx(0.5 * (r100.pro[0] + pro_at) * 0.01 / 0.01, abs=1e-12)
  # With exactly 100 distinct OK scores the 100-threshold grid is every OK score: identical to 'exact'.
  mask = np.zeros((1, 11, 10), dtype=bool)
  mask[0, 10, :] = True
  score = np.random.default_rng(4).normal(size=(1, 11, 10))
  a = metrics.aupro(mask, score, num_thresholds=100)
  b = metrics.aupro(mask, score, num_thresholds='exact')
  assert a.values == b.values


def test_pixel_and_image_auroc_equal_sklearn():
  rng = np.random.default_rng(5)
  masks = rng.uniform(size=(3, 20, 30)) < 0.1
  maps = rng.normal(size=masks.shape) + masks
  assert metrics.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
  tied = np.round(maps * 2) / 2  # many ties: the half-count of tied pairs matters
  assert metrics.pixel_auroc(masks, tied) == pytest.approx(roc_auc_score(masks.ravel(), tied.ravel()), abs=1e-12)
  labels = np.array([0, 1, 1, 0, 1, 0, 0])
  scores = np.array([0.1, 0.9, 0.3, 0.3, 0.8, 0.2, 0.85])
  # Every positive/negative pair; ties count half.
  pairs = [(p, q) for p in scores[labels == 1] for q in scores[labels == 0]]
  expected = np.mean([1.0 if p > q else 0.5 if p == q else 0.0 for p, q in pairs])
  assert metrics.image_auroc(labels, scores) == pytest.approx(expected, abs=1e-12)


def test_errors():
  masks, maps = random_case(seed=6, n=2, size=8)
  with pytest.raises(ValueError, match=r'\(2, 8, 8\).*\(2, 8, 7\)'):
    metrics.aupro(masks, maps[..., :7])
  with pytest.raises(ValueError, match=r'\(2, 8, 8\).*\(2, 8, 7\)'):
    metrics.pixel_auroc(masks, maps[..., :7])
  with pytest.raises(ValueError, match='no anomalous pixel'):
    metrics.aupro(np.zeros_like(masks), maps)
  with pytest.raises(ValueError, match='undefined'):
    metrics.pixel_auroc(np.zeros_like(masks), maps)
  with pytest.raises(ValueError, match='NaN'):
    metrics.aupro(masks, np.where(masks, np.nan, maps))
  with pytest.raises(ValueError, match='num_thresholds'):
    metrics.aupro(masks, maps, num_thresholds='all')
  with pytest.raises(ValueError, match='num_thresholds'):
    metrics.aupro(masks, maps, num_thresholds=0)
  with pytest.raises(ValueError, match='limits'):
    metrics.aupro(masks, maps, limits=(0.0,))
  with pytest.raises(ValueError, match=r'labels \[N\]'):
    metrics.image_auroc([0, 1], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match='image AUROC is undefined: the labels have 2 anomalous and 0 good'):
    metrics.image_auroc([1, 1], [0.1, 0.2])


def test_round_and_mean():
  assert metrics.round4(0.97126) == 0.9713
  assert metrics.round4(0.12344) == 0.1234
  assert metrics.dataset_mean({'a': 0.9, 'b': 0.8, 'c': float('nan')}) == pytest.approx(0.85)
  assert metrics.dataset_mean([1.0, 0.5]) == 0.75


def test_float32_maps_match_float64():
  masks, maps = random_case(seed=7)
  maps32 = maps.astype(np.float32)
  for num_thresholds in (100, 'exact'):
    a = metrics.aupro(masks, maps32, num_thresholds=num_thresholds)
    b = metrics.aupro(masks, maps32.astype(np.float64), num_thresholds=num_thresholds)
    assert a.values == b.values
    np.testing.assert_array_equal(a.pro, b.pro)
  assert metrics.pixel_auroc(masks, maps32) == metrics.pixel_auroc(masks, maps32.astype(np.float64))


def test_decision_metrics_count_by_hand():
  labels, decided = [1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 1, 0, 0, 0]
  m = metrics.decision_metrics(np.array(labels), np.array(decided))
  assert (m['TP'], m['FP'], m['TN'], m['FN']) == (2, 1, 3, 1)
  assert m['precision'] == pytest.approx(2 / 3) and m['recall'] == pytest.approx(2 / 3)
  assert m['F1'] == pytest.approx(2 / 3) and m['false_reject_rate'] == 0.25
  assert m['escape_rate'] == pytest.approx(1 / 3)
  good_only = metrics.decision_metrics(np.zeros(4), np.array([0, 1, 0, 0]))
  assert good_only['false_reject_rate'] == 0.25 and good_only['precision'] == 0
  assert all(np.isnan(good_only[k]) for k in ('recall', 'F1', 'escape_rate'))
  none_called = metrics.decision_metrics(np.array([1, 0]), np.array([0, 0]))
  assert np.isnan(none_called['precision']) and np.isnan(none_called['F1']) and none_called['escape_rate'] == 1
  with pytest.raises(ValueError, match='labels'):
    metrics.decision_metrics(np.zeros(3), np.zeros(2))
