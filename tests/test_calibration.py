import math

import numpy as np
import pytest

from g2sf_jax import calibration
from g2sf_jax.errors import CorruptOutputError, DataError


def _maps(n, value=0.0):
  return np.full((n, 4, 4), value)


def test_good_quantile_threshold_and_normalised_scale():
  good = np.arange(1.0, 101.0)  # median 50.5, 0.99-quantile 99.01
  cal = calibration.fit({'IMG': (good, _maps(100) + good[:, None, None])}, np.zeros(100), None,
                        rule='good_quantile', quantile=0.99, margin=0.1)
  row = cal.rows['IMG']
  q = np.quantile(good, 0.99)
  assert row.image.value == pytest.approx(q + 0.1 * (q - 50.5)) and row.rule == 'good_quantile'
  assert row.image.normalise(row.image.value) == pytest.approx(0.5)
  assert row.image.normalise(50.5) == pytest.approx(0.1, abs=1e-6)  # the median good scan reads 0.1
  assert row.image.raw_at(0.5) == pytest.approx(row.image.value)
  assert row.image.raw_at(0.9) == pytest.approx(row.image.value + row.image.scale * math.log(9))
  assert (row.good, row.defect) == (100, 0) and not row.is_defect(99.0) and row.is_defect(200.0)
  assert row.is_defect(99.0, threshold=0.2)
  scores = np.linspace(-1e6, 1e6, 11)
  assert np.all(np.diff(row.image.normalise(scores)) >= 0) and np.isfinite(row.image.normalise(scores)).all()


def test_auto_picks_f1_where_defects_are_labelled():
  scores = np.array([0.1, 0.2, 0.3, 0.35, 0.9, 1.0, 0.32])
  labels = np.array([0, 0, 0, 0, 1, 1, 1])
  assert calibration.f1_optimal(scores, labels) == pytest.approx((0.32 + 0.3) / 2)  # F1 6/7 beats 4/5
  masks = np.zeros((7, 4, 4), bool)
  masks[4:, 0, 0] = True
  maps = np.where(masks, 5.0, 1.0) + scores[:, None, None] * 0.01
  cal = calibration.fit({'PCD': (scores, maps)}, labels, masks)
  row = cal.rows['PCD']
  assert row.rule == 'f1' and row.image.value == pytest.approx(0.31) and 1.1 < row.pixel.value < 5
  assert (row.good, row.defect) == (4, 3)


def test_one_good_scan_still_gets_a_margin_and_a_slope():
  cal = calibration.fit({'IMG': (np.array([2.0]), _maps(1, 1.0))}, np.zeros(1), None)
  row = cal.rows['IMG']
  assert row.image.value > 2.0 and row.image.normalise(2.0) < 0.5  # the one good scan is not on the threshold
  assert 0.01 < row.image.normalise(2.0) and row.pixel.value > 1.0


def test_save_load_round_trip_and_errors(tmp_path):
  cal = calibration.fit({'IMG': (np.array([1.0, 2.0, 3.0]), _maps(3))}, np.zeros(3), None, source='holdout')
  cal.save(tmp_path / 'c.json')
  assert calibration.Calibration.load(tmp_path / 'c.json') == cal
  (tmp_path / 'bad.json').write_text('{"rows": {"IMG": {}}}')
  with pytest.raises(CorruptOutputError, match=r'bad\.json: not a calibration file'):
    calibration.Calibration.load(tmp_path / 'bad.json')
  with pytest.raises(DataError, match='needs good validation scans'):
    calibration.fit({'IMG': (np.ones(2), _maps(2))}, np.ones(2), None)
  with pytest.raises(DataError, match='rule=f1 needs defective validation scans'):
    calibration.fit({'IMG': (np.ones(2), _maps(2))}, np.zeros(2), None, rule='f1')
  with pytest.raises(DataError, match="rule 'best'"):
    calibration.fit({'IMG': (np.ones(2), _maps(2))}, np.zeros(2), None, rule='best')
  with pytest.raises(Exception, match='IMG validation scores'):
    calibration.fit({'IMG': (np.array([1.0, np.nan]), _maps(2))}, np.zeros(2), None)
