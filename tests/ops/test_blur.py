"""algorithms.md §3.3 / App. A: the uint8 Pillow blur is bit-exact against real Pillow; the float blur matches scipy."""
import numpy as np
import pytest
import scipy.ndimage
from PIL import Image, ImageFilter

from g2sf_jax.ops import blur


def _pillow_knn_blur(score_map: np.ndarray) -> np.ndarray:
  """The reference path: float map → uint8 'L' image (truncation) → Pillow GaussianBlur(4) → float."""
  mx = score_map.max()
  u8 = (score_map / mx * np.float32(255)).astype(np.float32).astype(np.uint8)
  out = np.asarray(Image.fromarray(u8, mode='L').filter(ImageFilter.GaussianBlur(radius=4)))
  return out.astype(np.float32) / np.float32(255) * mx


def test_box_radius_and_weights():
  assert blur.pil_box_radius(4.0, 3) == 3.4375


@pytest.mark.parametrize('shape', [(224, 224), (37, 53), (9, 200), (64, 5)])
def test_u8_blur_bit_exact_vs_pillow(shape):
  rng = np.random.default_rng(sum(shape))
  img = rng.integers(0, 256, size=shape, dtype=np.uint8)
  img[: shape[0] // 3] = 255  # saturated block: exercises the top of the uint32 range
  want = np.asarray(Image.fromarray(img, mode='L').filter(ImageFilter.GaussianBlur(radius=4)))
  got = np.asarray(blur.pil_gaussian_blur_u8(img))
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('shape', [(224, 224), (56, 80)])
def test_float_map_blur_bit_exact_vs_pillow(shape):
  rng = np.random.default_rng(shape[1])
  smooth = scipy.ndimage.zoom(rng.gamma(2.0, 1.5, size=(shape[0] // 4 + 1, shape[1] // 4 + 1)), 4, order=1)
  score_map = smooth[: shape[0], : shape[1]].astype(np.float32)
  np.testing.assert_array_equal(np.asarray(blur.pil_gaussian_blur(score_map)), _pillow_knn_blur(score_map))


def test_all_zero_map_stays_zero():
  np.testing.assert_array_equal(np.asarray(blur.pil_gaussian_blur(np.zeros((20, 20), np.float32))), 0)


def test_float_blur_vs_scipy():
  x = np.random.default_rng(3).random((224, 224)).astype(np.float32)
  want = scipy.ndimage.gaussian_filter(x.astype(np.float64), sigma=4, mode='reflect', truncate=4.0)
  np.testing.assert_allclose(np.asarray(blur.float_gaussian_blur(x, sigma=4.0)), want, rtol=1e-5, atol=1e-6)
