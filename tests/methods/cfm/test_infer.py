"""CFM inference: the per-pixel features, the maps, their smoothing and the three normalisations against PyTorch."""
import numpy as np
import pytest
import torch

from g2sf_jax.methods.cfm import features as cfm_features
from g2sf_jax.methods.cfm import infer
from g2sf_jax.ops import pooling
from tests.methods.cfm.test_train import _nets


def test_maps_and_scores_match_torch():
  n23, n32, params = _nets(3)
  g = torch.Generator().manual_seed(4)
  rgb, xyz = torch.randn(2, 224 * 224, 6, generator=g), torch.randn(2, 224 * 224, 10, generator=g)
  xyz[:, :224 * 100] = 0  # the upper part is background
  bg = (xyz.sum(-1) == 0).numpy()
  smoothed = infer.raw_maps(params, rgb.numpy(), xyz.numpy(), bg)
  image, pixel, pro = infer.scores(np.asarray(smoothed))
  for i in range(2):
    want_image, want_pixel, want_pro = torch_cfm_maps(n23, n32, rgb[i], xyz[i])
    np.testing.assert_allclose(pixel[i], want_pixel.numpy(), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(pro[i], want_pro.numpy(), rtol=2e-5, atol=1e-7)
    assert image[i] == pytest.approx(want_image.item(), rel=2e-5)
  none_image, none_pixel, _ = infer.scores(np.asarray(smoothed), 'none')
  np.testing.assert_array_equal(none_pixel, np.asarray(smoothed))
  assert none_image[0] == pytest.approx(float(np.asarray(smoothed)[0].max()))
  empty = infer.scores(np.zeros((1, 224, 224), np.float32))
  assert empty[0][0] == 0 and not empty[1].any()


def torch_cfm_maps(n23, n32, rgb, xyz):
  from references import torch_cfm
  return torch_cfm.maps(n23, n32, rgb, xyz)


def test_pixel_features_follow_the_reference_resizing():
  img = np.random.default_rng(0).normal(size=(2, 28, 28, 3)).astype(np.float32)
  want = torch.nn.functional.interpolate(torch.from_numpy(img).permute(0, 3, 1, 2), size=224, mode='bilinear',
                                         align_corners=False).permute(0, 2, 3, 1).reshape(2, -1, 3)
  np.testing.assert_allclose(cfm_features.rgb_rows(img), want.numpy(), rtol=1e-5, atol=1e-6)
  plane = np.random.default_rng(1).normal(size=(1, 224, 224, 2)).astype(np.float32)
  plane[:, :50] = 0
  t = torch.from_numpy(plane).permute(0, 3, 1, 2)
  pooled = torch.nn.functional.adaptive_avg_pool2d(torch.nn.functional.avg_pool2d(t, 3, 1), 224)
  np.testing.assert_allclose(np.asarray(pooling.pool_to_grid(plane, grid=224)), pooled.permute(0, 2, 3, 1).numpy(),
                             rtol=1e-5, atol=1e-6)

  class Backbone:
    def __call__(self, xyz):
      return plane
  rows = cfm_features.point_rows(Backbone(), np.zeros((1, 224, 224, 3), np.float32))
  assert rows.shape == (1, 224 * 224, 2)
  bg = cfm_features.background(rows)
  assert bg[0, :224 * 45].all() and not bg[0, 224 * 60:].any()  # the pooling dilates the valid region by a pixel
