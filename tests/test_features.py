"""algorithms.md §2.4–2.5: grids, background cells, joint features, and the resumable feature cache (stand-in
backbones)."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from g2sf_jax import features


class _Rgb:
  """Stand-in RGB backbone: 8×8 mean pooling of [B,224,224,3] → [B,28,28,4]."""
  name, dim = 'tiny_rgb', 4

  def __init__(self):
    self.calls = 0

  def __call__(self, rgb):
    self.calls += 1
    x = rgb.reshape(rgb.shape[0], 28, 8, 28, 8, 3).mean((2, 4))
    return jnp.concatenate([x, x[..., :1] ** 2], axis=-1)


class _Point:
  """Stand-in point backbone: per-pixel [1+x², y, z] at valid pixels, zero elsewhere; can fail after N calls."""
  name, dim = 'tiny_point', 3

  def __init__(self, fail_after=None):
    self.calls, self.fail_after = 0, fail_after

  def __call__(self, xyz):
    if self.fail_after is not None and self.calls >= self.fail_after:
      raise RuntimeError('interrupted')
    self.calls += 1
    valid = jnp.all(xyz != 0, axis=-1, keepdims=True)
    f = jnp.concatenate([1 + xyz[..., :1] ** 2, xyz[..., 1:]], axis=-1)
    return jnp.where(valid, f, 0.0)


def _samples(n, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    xyz = np.zeros((224, 224, 3), np.float32)
    r0, c0 = rng.integers(0, 150, size=2)
    xyz[r0:r0 + 60, c0:c0 + 50] = rng.uniform(0.5, 1.0, size=(60, 50, 3))
    out.append({'name': f'train/good/{i:03d}', 'rgb': rng.standard_normal((224, 224, 3)).astype(np.float32),
                'xyz': xyz})
  return out


def test_nearest_upsample_and_joint():
  img = np.arange(2 * 28 * 28 * 3, dtype=np.float32).reshape(2, 28, 28, 3)
  up = features.upsample_nearest2x(img)
  assert up.shape == (2, 56, 56, 3)
  i, j = np.meshgrid(np.arange(56), np.arange(56), indexing='ij')
  np.testing.assert_array_equal(up, img[:, i // 2, j // 2])
  pcd = -np.ones((2, 56, 56, 5), np.float32)
  joint = features.joint_features(up, pcd)
  assert joint.shape == (2, 3136, 8)
  np.testing.assert_array_equal(joint[1, 57, :3], img[1, 0, 0])   # cell (1, 1) ← 28-cell (0, 0)
  np.testing.assert_array_equal(joint[..., 3:], -1)


def test_extract_and_background():
  samples = _samples(3)
  rgb, point = _Rgb(), _Point()
  out = features.extract(rgb, point, samples, batch_size=2)
  assert out['img'].shape == (3, 28, 28, 4) and out['pcd'].shape == (3, 56, 56, 3)
  np.testing.assert_allclose(out['img'][2, 5, 7, :3], samples[2]['rgb'][40:48, 56:64].mean((0, 1)), rtol=1e-5)
  bg = features.background_mask(out['pcd'])
  for s, sample in enumerate(samples):
    valid = np.all(sample['xyz'] != 0, axis=-1)
    want = np.zeros((56, 56), bool)
    for i in range(56):
      r0, r1 = 222 * i // 56, -(-222 * (i + 1) // 56)
      for j in range(56):
        c0, c1 = 222 * j // 56, -(-222 * (j + 1) // 56)
        want[i, j] = not valid[r0:r1 + 2, c0:c1 + 2].any()   # 3×3 pool widens the bin by 2 input pixels
    np.testing.assert_array_equal(bg[s], want)
    assert 0 < want.sum() < 3136
  rgb_only = features.extract(rgb, None, samples, batch_size=2)
  assert set(rgb_only) == {'img'}
  np.testing.assert_array_equal(rgb_only['img'], out['img'])
  assert set(features.extract(None, point, samples[:1], batch_size=2)) == {'pcd'}
  with pytest.raises(ValueError, match='at least one'):
    features.extract(None, None, samples, batch_size=2)
  with pytest.raises(KeyError, match='xyz'):
    features.extract(None, point, [{'name': 'x', 'rgb': samples[0]['rgb']}], batch_size=1)


def test_cache_resumes_after_interruption(tmp_path):
  samples = _samples(7, seed=1)
  want = features.extract(_Rgb(), _Point(), samples, batch_size=2)
  flaky = _Point(fail_after=2)
  with pytest.raises(RuntimeError, match='interrupted'):
    features.cached_extract(tmp_path, _Rgb(), flaky, samples, batch_size=2)
  assert sorted(p.name for p in tmp_path.glob('chunk_*.npz')) == ['chunk_00000.npz', 'chunk_00001.npz']
  assert not list(tmp_path.glob('.*tmp'))
  rgb, point = _Rgb(), _Point()
  got = features.cached_extract(tmp_path, rgb, point, samples, batch_size=2)
  assert (rgb.calls, point.calls) == (2, 2)   # chunks 2 and 3 only
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])
  rgb, point = _Rgb(), _Point()
  again = features.cached_extract(tmp_path, rgb, point, samples, batch_size=2)
  assert (rgb.calls, point.calls) == (0, 0)
  np.testing.assert_array_equal(again['pcd'], want['pcd'])


def test_cache_invalidated_when_key_changes(tmp_path):
  samples = _samples(3, seed=2)
  features.cached_extract(tmp_path, _Rgb(), _Point(), samples, batch_size=2)
  point = _Point()
  features.cached_extract(tmp_path, None, point, samples, batch_size=2, extra_key={'ckpt': 'v1'})
  assert point.calls == 2
  assert json.loads((tmp_path / 'index.json').read_text())['extra'] == {'ckpt': 'v1'}
  renamed = [dict(s, name=s['name'] + 'x') for s in samples]
  point = _Point()
  out = features.cached_extract(tmp_path, None, point, renamed, batch_size=2, extra_key={'ckpt': 'v1'})
  assert point.calls == 2 and set(out) == {'pcd'}


def test_truncated_chunk_is_named_and_recomputed(tmp_path):
  samples = _samples(5, seed=3)
  want = features.cached_extract(tmp_path, _Rgb(), _Point(), samples, batch_size=2)
  chunk = tmp_path / 'chunk_00001.npz'
  chunk.write_bytes(chunk.read_bytes()[:100])  # a copy cut short
  with pytest.raises(ValueError, match='chunk_00001.npz'):
    features.load_cached(tmp_path)
  logged = []
  rgb, point = _Rgb(), _Point()
  got = features.cached_extract(tmp_path, rgb, point, samples, batch_size=2, log=logged.append)
  assert (rgb.calls, point.calls) == (1, 1)  # only the damaged chunk
  assert any('chunk_00001.npz' in m and 'recomputing' in m for m in logged)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])
  chunk.unlink()
  with pytest.raises(FileNotFoundError, match='chunk_00001.npz'):
    features.load_cached(tmp_path)


def test_to_grid():
  img = np.arange(2 * 28 * 28 * 3, dtype=np.float32).reshape(2, 28, 28, 3)
  np.testing.assert_array_equal(features.to_grid(img), features.upsample_nearest2x(img))
  up = features.to_grid(img)
  assert features.to_grid(up) is up
  with pytest.raises(ValueError, match='56² or 28²'):
    features.to_grid(np.zeros((1, 14, 14, 3), np.float32))
