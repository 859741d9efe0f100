import zipfile

import numpy as np
import pytest
from scipy import ndimage

from g2sf_jax import distributed, memory_bank
from g2sf_jax.methods.g2sf import dataset

RGB, PCD, K = 6, 9, 30


def _place(*coresets):
  mesh = distributed.make_mesh()
  return tuple(memory_bank.place_bank(c, mesh) for c in coresets)


def _coresets(seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(K, RGB)).astype(np.float32), rng.normal(size=(K, PCD)).astype(np.float32)


def _chunk(indices, img_grid=56):
  out = {'img': [], 'pcd': [], 'mask': []}
  for i in indices:
    rng = np.random.default_rng(100 + int(i))
    pcd = rng.normal(size=(56, 56, PCD)).astype(np.float32)
    pcd[: 5 + int(i)] = 0  # background rows
    mask = np.zeros((224, 224), bool)
    mask[40 + 3 * int(i):80, 100:150] = True
    out['img'].append(rng.normal(size=(img_grid, img_grid, RGB)).astype(np.float32))
    out['pcd'].append(pcd)
    out['mask'].append(mask)
  return {k: np.stack(v) for k, v in out.items()}


def test_patch_labels_dilate_then_sample_every_fourth():
  m = np.zeros((224, 224), bool)
  m[13, 7] = True           # dilated rows 12..14, cols 6..8 → only cell (3, 2) is sampled
  m[100:103, 200] = True    # rows 99..103 → cells 25 (row 100); cols 199..201 → cell 50 (col 200)
  got = dataset.patch_labels(m).reshape(56, 56)
  expected = ndimage.binary_dilation(m, np.ones((3, 3)))[::4, ::4]
  np.testing.assert_array_equal(got, expected)
  assert got.sum() == 2 and got[3, 2] and got[25, 50]
  with pytest.raises(ValueError, match='224'):
    dataset.patch_labels(np.zeros((56, 56), bool))


@pytest.mark.parametrize('img_grid', [28, 56])
def test_chunk_rows_against_brute_force(img_grid):
  cs = _coresets()
  arrays = _chunk([0, 1], img_grid)
  rows = dataset.chunk_rows(arrays['img'], arrays['pcd'], arrays['mask'], _place(*cs), num_anchors=20)
  img = np.repeat(np.repeat(arrays['img'], 56 // img_grid, 1), 56 // img_grid, 2).reshape(-1, RGB)
  pcd = arrays['pcd'].reshape(-1, PCD)
  label = np.concatenate([ndimage.binary_dilation(m, np.ones((3, 3)))[::4, ::4].reshape(-1) for m in arrays['mask']])
  fg = pcd.sum(1) != 0
  assert len(rows['label']) == fg.sum() == 2 * 3136 - 56 * (5 + 6)
  np.testing.assert_array_equal(rows['feature'], np.concatenate([img, pcd], 1)[fg])
  np.testing.assert_array_equal(rows['label'], label[fg])
  for m, (q, bank) in enumerate(((img[fg], cs[0]), (pcd[fg], cs[1]))):
    d = np.sqrt(((q[:, None].astype(np.float64) - bank[None]) ** 2).sum(-1))
    order = np.argsort(d, 1, kind='stable')[:, :20]
    np.testing.assert_array_equal(rows['anchor_idx'][:, 20 * m:20 * (m + 1)], order)
    np.testing.assert_allclose(rows['score'][:, m], d.min(1), rtol=1e-5)
  assert rows['anchor_idx'].dtype == np.int32 and rows['anchor_idx'].shape[1] == 40


def test_build_resumes_per_chunk(tmp_path):
  cs = _place(*_coresets())
  calls = []

  def make(indices):
    calls.append(list(indices))
    if len(calls) == 2 and not (tmp_path / 'stop').exists():
      (tmp_path / 'stop').touch()
      raise KeyboardInterrupt
    return _chunk(indices)

  with pytest.raises(KeyboardInterrupt):
    dataset.build(tmp_path / 'fd', 5, make, cs, chunk_size=2, num_anchors=20)
  assert calls == [[0, 1], [2, 3]]
  with zipfile.ZipFile(tmp_path / 'fd' / 'chunks' / 'chunk_000000_2.npz') as z:  # stored, not deflated: fast
    assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
  data = dataset.build(tmp_path / 'fd', 5, make, cs, chunk_size=2, num_anchors=20)
  assert calls[2:] == [[2, 3], [4]]  # chunk 0 was kept
  assert not (tmp_path / 'fd' / 'chunks').exists()  # joined, then removed
  ref = dataset.chunk_rows(*(lambda a: (a['img'], a['pcd'], a['mask']))(_chunk(range(5))), cs, num_anchors=20)
  for k in ('feature', 'score', 'label', 'anchor_idx'):
    np.testing.assert_array_equal(np.asarray(getattr(data, k)), ref[k])
  n_calls = len(calls)
  (tmp_path / 'fd' / 'chunks').mkdir()  # as an interruption between the join and the removal leaves it
  (tmp_path / 'fd' / 'chunks' / 'chunk_000000_2.npz').touch()
  again = dataset.build(tmp_path / 'fd', 5, make, cs, chunk_size=2, num_anchors=20)
  assert len(calls) == n_calls and isinstance(again.feature, np.memmap)
  assert not (tmp_path / 'fd' / 'chunks').exists()
  np.testing.assert_array_equal(again.label, data.label)
  with pytest.raises(FileNotFoundError, match='fusion_data'):
    dataset.load(tmp_path / 'nothing')


def test_build_from_synthetic_anomalies(tmp_path):
  from g2sf_jax.data import transforms
  from g2sf_jax.methods.g2sf import synthesis
  from tests.methods.g2sf.test_synthesis import _disc_sample
  train = [_disc_sample(i) for i in range(3)]
  sources = [_disc_sample(9)['xyz']]

  def make(indices):  # seeded synthesis → algorithms.md §1.4 resizing → 4×4-pooled pixels standing in for the backbones
    made = [synthesis.synthesize_indexed(train, lambda i: sources[i], ['s.tiff'], 'bagel', 'mvtec3d', 0, int(i))
            for i in indices]
    rgb = np.stack([transforms.resize_rgb(s['rgb']) for s in made])
    xyz = np.stack([transforms.resize_xyz(s['xyz']) for s in made])
    pool = lambda x: x.reshape(len(made), 56, 4, 56, 4, -1).mean((2, 4))
    pcd = pool(xyz) * (pool(np.all(xyz != 0, -1)[..., None].astype(np.float32)) == 1)
    return {'img': np.concatenate([pool(rgb)] * 2, -1), 'pcd': np.concatenate([pcd] * 3, -1),
            'mask': np.stack([transforms.resize_mask(s['mask']) for s in made])}

  rng = np.random.default_rng(0)
  cs = _place(rng.normal(size=(K, 6)).astype(np.float32), (rng.normal(size=(K, 9)) * 0.01 + 0.1).astype(np.float32))
  fd = dataset.build(tmp_path / 'fd', 3, make, cs, chunk_size=2, num_anchors=20)
  assert fd.label.sum() > 0 and (fd.label == 0).sum() > 0 and np.all(fd.feature[:, 6:].sum(1) != 0)
  assert fd.anchor_idx.shape == (len(fd.label), 40) and np.all(fd.score >= 0)
