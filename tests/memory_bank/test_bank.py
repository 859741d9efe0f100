"""A modality bank built, saved and loaded back."""
import jax
import numpy as np
import pytest

from g2sf_jax import distributed
from g2sf_jax import memory_bank as mb

MESH = distributed.make_mesh()


def test_build_save_load_round_trip(tmp_path):
  rng = np.random.default_rng(8)
  img = rng.standard_normal((400, 12)).astype(np.float32) * 5 + 2
  pcd = rng.standard_normal((500, 9)).astype(np.float32)
  banks = {'img': mb.build(img, True, 0.1, 0.9, jax.random.key(0), mesh=MESH),
           'pcd': mb.build(pcd, False, 0.1, 0.9, jax.random.key(0), fp16=False, mesh=MESH)}
  assert banks['img'].coreset.shape == (40, 12) and banks['pcd'].coreset.shape == (50, 9)
  np.testing.assert_allclose(banks['img'].coreset, (img[banks['img'].coreset_idx] - img.mean()) / img.std(ddof=1),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(banks['pcd'].coreset, pcd[banks['pcd'].coreset_idx])
  mb.save(tmp_path / 'bagel', banks, {'class': 'bagel'})
  loaded, meta = mb.load(tmp_path / 'bagel')
  assert meta['class'] == 'bagel' and meta['modalities'] == ['img', 'pcd']
  for name in banks:
    np.testing.assert_array_equal(loaded[name].coreset, banks[name].coreset)
    np.testing.assert_array_equal(loaded[name].coreset_idx, banks[name].coreset_idx)
    assert loaded[name].normaliser == banks[name].normaliser
  with pytest.raises(FileNotFoundError, match='make it'):
    mb.load(tmp_path / 'nope', how_to_make='make it')
