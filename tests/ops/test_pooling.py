"""algorithms.md §2.4 step 3 / App. B: avgpool 3 + PyTorch adaptive bins, against App. B, a hand-built case and torch.
"""
import numpy as np
import torch

from g2sf_jax.ops import pooling

# algorithms.md Appendix B, typed in by hand.
_APP_B = """(0,4) (3,8) (7,12) (11,16) (15,20) (19,24) (23,28) (27,32) (31,36) (35,40) (39,44) (43,48) (47,52) (51,56)
(55,60) (59,64) (63,68) (67,72) (71,76) (75,80) (79,84) (83,88) (87,92) (91,96) (95,100) (99,104) (103,108) (107,111)
(111,115) (114,119) (118,123) (122,127) (126,131) (130,135) (134,139) (138,143) (142,147) (146,151) (150,155)
(154,159) (158,163) (162,167) (166,171) (170,175) (174,179) (178,183) (182,187) (186,191) (190,195) (194,199)
(198,203) (202,207) (206,211) (210,215) (214,219) (218,222)"""


def test_bins_match_appendix_b():
  want = [tuple(int(v) for v in t.strip('()').split(',')) for t in _APP_B.split()]
  assert pooling.adaptive_bins(222, 56) == want


def test_single_pixel_by_hand():
  bins = [tuple(int(v) for v in t.strip('()').split(',')) for t in _APP_B.split()]
  x = np.zeros((1, 224, 224, 2), np.float32)
  x[0, 110, 7] = (9.0, -18.0)   # row 110 lies in the overlap of bins 27 (107,111) and 28 (111,115) via the 3×3 pool
  got = np.asarray(pooling.pool_to_grid(x))
  want = np.zeros((56, 56, 2))
  for i, (r0, r1) in enumerate(bins):
    for j, (c0, c1) in enumerate(bins):
      # pooled pixel (p, q) sees input rows p..p+2, cols q..q+2, each with weight 1/9
      hits = sum(1 for p in range(r0, r1) for q in range(c0, c1) if p <= 110 <= p + 2 and q <= 7 <= q + 2)
      want[i, j] = np.array([9.0, -18.0]) / 9 * hits / ((r1 - r0) * (c1 - c0))
  np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-7)
  # pooled rows 108..110 contain input row 110: bins 26 (103,108) no, 27 (107,111) yes, 28 (111,115) no
  assert np.flatnonzero(np.abs(got[0, :, :, 0]).sum(1)).tolist() == [27]
  assert np.flatnonzero(np.abs(got[0, :, :, 0]).sum(0)).tolist() == [1, 2]  # pooled cols 5..7: bins (3,8), (7,12)


def test_matches_torch():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 224, 224, 5)).astype(np.float32)
  x[:, :, :100] = 0.0
  t = torch.from_numpy(x).permute(0, 3, 1, 2)
  want = torch.nn.functional.adaptive_avg_pool2d(torch.nn.functional.avg_pool2d(t, 3, 1), 56)
  want = want.permute(0, 2, 3, 1).numpy()
  got = np.asarray(pooling.pool_to_grid(x))
  assert got.shape == (2, 56, 56, 5)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[:, :, :24] == 0, want[:, :, :24] == 0)


def test_bands_rebuild_the_pooling_matrix():
  for in_size, out_size in ((224, 56), (224, 224), (48, 12), (32, 4), (10, 3)):
    starts, weights = pooling.band(in_size, out_size)
    rebuilt = np.zeros((out_size, in_size))
    for i, start in enumerate(starts):
      rebuilt[i, start:start + weights.shape[1]] = weights[i]
    np.testing.assert_allclose(rebuilt, pooling.pooling_matrix(in_size, out_size), rtol=1e-7, atol=0)
    assert starts.min() >= 0 and starts.max() + weights.shape[1] <= in_size
