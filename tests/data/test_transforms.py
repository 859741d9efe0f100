"""algorithms.md §1.4 load transforms (torch/PIL nearest rules, PIL bicubic, the valid-point rule)."""
from fractions import Fraction

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

from g2sf_jax.data import transforms


def test_torch_nearest_hand_computed():
  # src = floor(dst * in / out)
  assert transforms.nearest_indices_torch(800, 224)[:5].tolist() == [0, 3, 7, 10, 14]
  assert transforms.nearest_indices_torch(800, 224)[-1] == 796
  assert transforms.nearest_indices_torch(5, 3).tolist() == [0, 1, 3]
  assert transforms.nearest_indices_torch(3, 7).tolist() == [0, 0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize('h, w, out', [(800, 800, 224), (400, 401, 224), (512, 512, 224), (224, 224, 224),
                                       (5, 4, 3), (3, 2, 7), (112, 100, 224), (300, 700, 224)])
def test_resize_xyz_matches_torch(h, w, out):
  xyz = np.random.default_rng(h * w).random((h, w, 3), dtype=np.float32)
  ref = torch.nn.functional.interpolate(torch.from_numpy(xyz).permute(2, 0, 1)[None], size=(out, out),
                                        mode='nearest')[0].permute(1, 2, 0).numpy()
  got = transforms.resize_xyz(xyz, out)
  assert got.dtype == np.float32 and np.array_equal(got, ref)


def _pil_nearest_hand(n_in, n_out):
  """PIL NEAREST samples pixel centres: floor((dst + 0.5) * in / out), in exact arithmetic."""
  return [int((Fraction(2 * d + 1, 2) * Fraction(n_in, n_out)).__floor__()) for d in range(n_out)]


@pytest.mark.parametrize('h, w, out', [(800, 800, 224), (5, 5, 3), (400, 300, 224), (3, 3, 7), (600, 800, 224)])
def test_resize_mask_pil_nearest(h, w, out):
  assert _pil_nearest_hand(800, 224)[:4] == [1, 5, 8, 12] and _pil_nearest_hand(5, 3) == [0, 2, 4]
  mask = (np.random.default_rng(h).random((h, w)) > 0.5).astype(np.uint8) * 255
  mask[0, 0] = 128  # > 0.5 after /255
  mask[-1, -1] = 127
  rows, cols = _pil_nearest_hand(h, out), _pil_nearest_hand(w, out)
  got = transforms.resize_mask(mask, out)
  assert got.dtype == bool and np.array_equal(got, mask[np.ix_(rows, cols)] >= 128)


def test_resize_mask_512_follows_pil_fixed_point():
  # Where (dst + 0.5) * 512/224 is an exact integer, PIL's fixed-point affine sampling lands one pixel lower than
  # the exact formula (25 of 224 positions). We call PIL itself, so Eyecandies masks match the reference.
  mask = np.zeros((512, 512), np.uint8)
  mask[:, 8] = 255  # hand formula: output column 3 samples column 8; PIL samples column 7
  got = transforms.resize_mask(mask)
  assert _pil_nearest_hand(512, 224)[3] == 8
  assert not got[:, 3].any() and got[:, 4:].sum() == 0 and got[:, :3].sum() == 0
  mask[:, 7] = 255
  assert transforms.resize_mask(mask)[:, 3].all()


def test_xyz_and_mask_rules_differ_everywhere_for_800():
  torch_idx = transforms.nearest_indices_torch(800, 224)
  assert (torch_idx != np.array(_pil_nearest_hand(800, 224))).all()  # algorithms.md §1.4 warning


def test_resize_rgb_is_pil_bicubic_then_imagenet():
  rgb = np.random.default_rng(0).integers(0, 256, (300, 257, 3), dtype=np.uint8)
  resized = np.asarray(Image.fromarray(rgb).resize((224, 224), Image.Resampling.BICUBIC), np.float64)
  ref = (resized / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
  got = transforms.resize_rgb(rgb)
  assert got.shape == (224, 224, 3) and got.dtype == np.float32
  np.testing.assert_allclose(got, ref, atol=2e-6)


def test_valid_mask_all_three_coordinates():
  xyz = np.array([[1, 2, 3], [0, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 0], [0, -0.3, 0.2]], np.float32)
  expected = [True, False, False, False, False, False]
  assert transforms.valid_mask(xyz).tolist() == expected
  assert transforms.valid_mask(jnp.asarray(xyz)).tolist() == expected  # works on JAX arrays too
  assert transforms.valid_mask(xyz.reshape(2, 3, 3)).shape == (2, 3)
