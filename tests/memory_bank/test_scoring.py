"""algorithms.md §3.3: unimodal scores and maps against a NumPy/torch/Pillow transliteration."""
import numpy as np
import torch
from PIL import Image, ImageFilter

from g2sf_jax import distributed
from g2sf_jax import memory_bank as mb

MESH = distributed.make_mesh()


def _pil_knn_blur(m: np.ndarray) -> np.ndarray:
  mx = m.max()
  u8 = (m / mx * np.float32(255)).astype(np.float32).astype(np.uint8)
  out = np.asarray(Image.fromarray(u8, mode='L').filter(ImageFilter.GaussianBlur(radius=4)))
  return out.astype(np.float32) / np.float32(255) * mx


def test_upsample_bilinear_matches_torch():
  x = np.random.default_rng(5).random((56, 56)).astype(np.float32)
  want = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], size=224, mode='bilinear',
                                         align_corners=False)[0, 0].numpy()
  np.testing.assert_allclose(np.asarray(mb.upsample_bilinear(x, 224)), want, rtol=1e-6, atol=1e-7)


def test_unimodal_scores_vs_numpy_transliteration():
  rng = np.random.default_rng(6)
  dim = 6
  coreset = rng.standard_normal((80, dim)).astype(np.float32)
  feats = (coreset[rng.integers(0, 80, 3136)] + 0.3 * rng.standard_normal((3136, dim))).astype(np.float32)
  feats[1234] += 4.0   # one clearly anomalous patch
  res = mb.unimodal_scores(feats, coreset, MESH, num_anchors=20)

  # algorithms.md §3.3 in NumPy (float64 distances)
  dist = np.sqrt(((feats[:, None].astype(np.float64) - coreset[None]) ** 2).sum(-1))
  min_idx = dist.argmin(1)
  min_val = dist.min(1)
  anchor = np.argsort(dist, axis=1, kind='stable')[:, :20]
  anchor[:, 0] = min_idx
  p = int(min_val.argmax())
  assert p == 1234
  m_star = coreset[min_idx[p]]
  nn = np.argsort(np.sqrt(((m_star[None] - coreset) ** 2).sum(-1)), kind='stable')[:3]
  knn = np.sqrt(((feats[p][None] - coreset[nn[1:]]) ** 2).sum(-1))
  w = 1 - np.exp(min_val[p] / np.sqrt(dim)) / (np.exp(knn / np.sqrt(dim)).sum() + 1e-5)
  np.testing.assert_allclose(res.image_score, w * min_val[p], rtol=1e-5)
  assert 0 < w < 1
  np.testing.assert_allclose(res.min_dist, min_val, rtol=1e-6)
  np.testing.assert_array_equal(res.min_idx, min_idx)
  np.testing.assert_array_equal(res.anchor_idx, anchor)
  up = torch.nn.functional.interpolate(torch.from_numpy(res.min_dist.reshape(1, 1, 56, 56)), size=224,
                                       mode='bilinear', align_corners=False)[0, 0].numpy()
  want_map = _pil_knn_blur(up)
  assert res.map224.shape == (224, 224)
  np.testing.assert_allclose(res.map224, want_map, rtol=0, atol=float(up.max()) / 255 * 1.0001)
  assert (res.map224 == want_map).mean() > 0.99
  # batched = per-sample
  batch = mb.unimodal_scores_batch(np.stack([feats, feats[::-1]]), coreset, MESH, blur='none')
  np.testing.assert_array_equal(batch[0].anchor_idx, res.anchor_idx)
  np.testing.assert_array_equal(batch[1].min_dist, res.min_dist[::-1])
