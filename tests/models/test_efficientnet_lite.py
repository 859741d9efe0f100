"""Flax EfficientNet-Lite0 and its patch-feature backbone against the PyTorch reference, with the real shipped
weights."""
import jax
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from g2sf_jax.models import efficientnet_lite as enl
from ports import common
from ports import efficientnet_lite0 as port
from references import torch_efficientnet_lite as ref


@pytest.fixture(scope='module')
def weights():
  path = port.packaged_path()
  variables = common.convert(port.load_state(path), port.table())
  return variables, ref.load(str(path))


def _nchw_to_nhwc(t: torch.Tensor) -> np.ndarray:
  return t.permute(0, 2, 3, 1).numpy()


def test_stage_outputs_and_logits_match_torch(weights):
  variables, torch_model = weights
  x = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)  # the Lite input range
  logits, inter = jax.jit(enl.EfficientNetLite0().apply)(variables, x)
  with torch.no_grad():
    t_logits, t_inter = torch_model(torch.from_numpy(x).permute(0, 3, 1, 2))
  assert set(inter) == set(t_inter) == {'stem', 'head', *(f'stage{i}' for i in range(7))}
  for name, t in t_inter.items():
    stride = enl.STRIDES[name]
    assert inter[name].shape == (1, 224 // stride, 224 // stride, t.shape[1]), name
    assert t.shape[1] == enl.stage_channels(name)
    err = np.abs(np.asarray(inter[name]) - _nchw_to_nhwc(t)).max()
    assert err <= 1e-4, (name, err)
  np.testing.assert_allclose(np.asarray(logits), t_logits.numpy(), atol=1e-4)


def test_backbone_matches_torch_pipeline(weights):
  variables, torch_model = weights
  rng = np.random.default_rng(1)
  rgb01 = rng.uniform(0, 1, (2, 224, 224, 3)).astype(np.float32)
  mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
  imagenet = (rgb01 - mean) / std
  backbone = enl.EfficientNetLite0Backbone(variables)
  assert (backbone.name, backbone.dim) == ('efficientnet_lite0', 40 + 112)
  out = np.asarray(backbone(imagenet))
  assert out.shape == (2, 28, 28, 152) and out.dtype == np.float32

  # Reference: Lite preprocessing from the 0..1 image, torch stages, 3x3 mean without padding cells, bilinear up.
  with torch.no_grad():
    _, t = torch_model(torch.from_numpy((rgb01 * 255 - 127) / 128).permute(0, 3, 1, 2))
    s8 = F.avg_pool2d(t['stage2'], 3, 1, 1, count_include_pad=False)
    s16 = F.avg_pool2d(t['stage4'], 3, 1, 1, count_include_pad=False)
    s16 = F.interpolate(s16, size=(28, 28), mode='bilinear', align_corners=False)
    want = _nchw_to_nhwc(torch.cat([s8, s16], 1))
  np.testing.assert_allclose(out, want, atol=1e-4)

  # A sample's features do not depend on the rest of the batch (inference BN): reversing the batch reverses them.
  np.testing.assert_allclose(np.asarray(backbone(imagenet[::-1])), out[::-1], atol=1e-5)
  with pytest.raises(ValueError, match=r'\[B,224,224,3\]'):
    backbone(imagenet[:, :112])


def test_local_average_by_hand():
  x = np.arange(12, dtype=np.float32).reshape(1, 3, 4, 1)
  got = np.asarray(enl.local_average(x))[0, :, :, 0]
  # Corner (0,0): mean of rows 0-1, cols 0-1 = (0+1+4+5)/4; centre (1,1): mean of the full 3x3 block = 5.
  assert got[0, 0] == pytest.approx(2.5)
  assert got[1, 1] == pytest.approx(5.0)
  assert got[2, 3] == pytest.approx((6 + 7 + 10 + 11) / 4)


def test_imagenet_to_lite():
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  rgb255 = np.array([[0.0, 127.0, 255.0]])
  got = np.asarray(enl.imagenet_to_lite(((rgb255 / 255 - mean) / std).astype(np.float32)))
  np.testing.assert_allclose(got, [[-127 / 128, 0.0, 1.0]], atol=1e-6)
