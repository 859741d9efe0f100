import numpy as np
import pytest

from g2sf_jax import calibration, decisions
from g2sf_jax.data import kind


def _plane(h, w, step=0.001):
  """A flat grid of `step` spacing, every coordinate non-zero (a zero coordinate marks a missing point)."""
  ys, xs = (np.mgrid[:h, :w].astype(np.float32) + 1) * step
  return np.stack([xs, ys, np.full_like(xs, 0.5)], -1)


def test_pixel_areas_of_a_regular_grid():
  xyz = _plane(6, 8)
  xyz[0, 0] = 0  # no point
  areas = decisions.pixel_areas(xyz)
  assert areas[0, 0] == 0 and np.allclose(areas[1:], 1e-6) and np.allclose(areas[0, 1:], 1e-6)


def test_regions_sizes_positions_and_order():
  xyz = _plane(20, 30)
  mask = np.zeros((20, 30), bool)
  mask[2:4, 3:6] = True          # 6 px
  mask[10:15, 20:24] = True      # 20 px
  mask[16, 0] = mask[17, 1] = True  # diagonal neighbours: one region of 2 px
  score = np.where(mask, 0.7, 0.1).astype(np.float32)
  score[12, 21] = 0.95
  found = decisions.regions(mask, score, xyz, unit_mm=1000.0)
  assert [r.area_px for r in found] == [20, 6, 2]
  big = found[0]
  assert big.bbox == (20, 10, 24, 15) and big.peak == pytest.approx(0.95)
  assert big.area_mm2 == pytest.approx(20.0)  # 1 mm grid
  assert big.centroid == pytest.approx((0.0225, 0.013, 0.5))
  assert decisions.regions(mask, score, None, 1000.0)[0].area_mm2 is None
  assert decisions.regions(np.zeros((4, 4), bool), score[:4, :4], None, 1.0) == ()


def test_decide_maps_back_to_the_raw_scan_and_applies_the_threshold():
  raw = (100, 140)
  xyz = np.zeros((200, 200, 3), np.float32)
  xyz[50:150, 30:170] = _plane(100, 140)  # pad_square centres the 100×140 scan on 200×200
  stored = kind.Stored(rgb=None, xyz=xyz, xyz_orig=None, mask=np.zeros((200, 200), np.uint8), raw_size=raw)
  map224 = np.zeros((224, 224), np.float32)
  map224[100:124, 100:124] = 10.0  # a hot square in the middle
  row = calibration.RowCalibration(calibration.Threshold(1.0, 0.5), calibration.Threshold(5.0, 1.0), 'good_quantile',
                                   10, 0)
  d = decisions.decide(stored, 3.0, map224, row)
  assert d.label == 'defect' and d.map.shape == d.mask.shape == raw and d.score > 0.5
  assert len(d.regions) == 1 and d.regions[0].area_mm2 > 0
  x0, y0, x1, y1 = d.regions[0].bbox
  assert abs((x0 + x1) / 2 - 70) <= 2 and abs((y0 + y1) / 2 - 50) <= 2  # the middle of the raw scan
  lenient = decisions.decide(stored, 3.0, map224, row, threshold=0.99)
  assert lenient.label == 'good' and lenient.mask.sum() < d.mask.sum() and lenient.score == d.score
  assert decisions.decide(stored, 0.5, map224 * 0, row).summary()['defect_pixels'] == 0
