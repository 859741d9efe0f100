"""The one scoring path: checks that keep a scan from being scored dishonestly, and the decisions it makes."""
import numpy as np
import pytest

from g2sf_jax import calibration, data, scoring
from g2sf_jax.data import kind
from g2sf_jax.errors import DataError
from g2sf_jax.methods import base


class _Model:
  """A scoring.Model whose features and image score are the scan's largest coordinate (NaN for 7), map = that score
  with a hot spot."""
  rows, main_row, modalities, data_modalities, needs = ('PCD',), 'PCD', ('xyz',), ('xyz',), ('pcd',)
  kind = data.get('mvtec3d')
  batch_size, min_points, unit_mm, clean = 2, 10, 1000.0, True

  def __init__(self, calibrated: calibration.Calibration | None = None):
    self.calibration = calibrated
    self.calls = []

  def features(self, inputs, kinds):
    self.calls.append(len(inputs))
    value = lambda s: np.nan if np.abs(s['xyz']).max() == 7 else float(np.abs(s['xyz']).max())
    return {'pcd': np.stack([np.full((56, 56, 4), value(s), np.float32) for s in inputs])}

  def scores(self, feats):
    image = feats['pcd'].mean(axis=(1, 2, 3))
    maps = np.broadcast_to(image[:, None, None], (len(image), 224, 224)).copy()
    maps[:, 100:120, 100:130] *= 3  # a hot spot
    return {'PCD': base.RowScores(image, maps)}


def _stored(value: float, valid: int = 400) -> kind.Stored:
  xyz = np.zeros((100, 100, 3), np.float32)
  xyz.reshape(-1, 3)[:valid] = value
  return kind.Stored(None, xyz, None, np.zeros((100, 100), np.uint8), raw_size=(100, 100))


def test_scans_that_cannot_be_scored_get_a_reason_never_a_score():
  model = _Model()
  scans = [_stored(0.5), _stored(0.5, valid=0), _stored(7.0), _stored(0.25)]
  out = scoring.score_stored(model, scans, ['a', 'b', 'c', 'd'])
  assert [r.status for r in out] == ['ok', 'unscorable', 'unscorable', 'ok']
  assert 'valid points' in out[1].reason and out[1].image == {}
  assert 'NaN or infinite' in out[2].reason and out[2].image == {}
  assert out[0].image['PCD'] == pytest.approx(0.5) and out[3].image['PCD'] == pytest.approx(0.25)
  assert model.calls == [2, 1]  # batches of batch_size, the unscorable input never sent
  zero = scoring.score_stored(model, [_stored(0.5)], ['z'], feats={'pcd': np.zeros((1, 56, 56, 4), np.float32)})
  assert zero[0].status == 'unscorable' and 'all zero' in zero[0].reason and model.calls == [2, 1]
  with pytest.raises(DataError, match=r"x: this detector needs an organised point cloud \(xyz\)"):
    scoring.score_stored(model, [kind.Stored(np.zeros((50, 50, 3), np.uint8), None, None,
                                             np.zeros((50, 50), np.uint8))], ['x'])


def test_decisions_at_the_calibrated_and_a_chosen_threshold():
  good = np.array([0.1, 0.12, 0.11, 0.13])
  fitted = calibration.fit({'PCD': (good, np.broadcast_to(good[:, None, None], (4, 224, 224)))}, np.zeros(4, bool),
                           None, quantile=1.0, margin=0.0)
  model = _Model(fitted)
  low, high = scoring.score_stored(model, [_stored(0.05), _stored(0.2)], ['low', 'high'])
  assert (low.label, high.label) == ('good', 'defect')
  assert low.decision.score < 0.5 < high.decision.score
  assert high.decision.mask.shape == (100, 100) and high.decision.mask.sum() > low.decision.mask.sum()
  for decided in (low.decision, high.decision):
    assert sum(r.area_px for r in decided.regions) == int(decided.mask.sum())
    assert all(r.peak >= 0.5 for r in decided.regions)
  lenient = scoring.score_stored(model, [_stored(0.05)], ['low'], threshold=1e-6)[0]
  assert lenient.image == low.image and lenient.decision.score == low.decision.score  # scores unchanged
  assert lenient.label == 'defect' and lenient.decision.mask.sum() > low.decision.mask.sum()
