"""prepare + load round trips on synthetic, MVTec-layout and Eyecandies data; bad inputs name the file."""
import hashlib
import json
import re
import shutil

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from g2sf_jax import data, features, io
from g2sf_jax.data import eyecandies, preprocessing, prepared, transforms
from g2sf_jax.data import synthetic as synthetic_data
from g2sf_jax.io import DataError

SIZE = 200  # synthetic pixel pitch 1.6 mm: DBSCAN (eps 6 mm, 30 points) still finds the object


def _tree(root):
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob('*')) if p.is_file()}


# Synthetic / MVTec-layout preparation.

@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
  """A tiny generated raw set, prepared once: (raw_dir, data_dir, raw hash before, report)."""
  root = tmp_path_factory.mktemp('synthetic')
  raw = synthetic_data.generate(root / 'raw', ['cube'], n_train=2, n_test=7, size=SIZE, seed=0)
  before = _tree(raw)
  report = prepared.prepare('synthetic', raw, root / 'data')
  return raw, root / 'data', before, report


def test_prepare_report_and_raw_untouched(synthetic):
  raw, data_dir, before, report = synthetic
  assert list(report) == list(synthetic_data.SHAPES[:1]) or list(report) == ['cube']
  assert report['cube']['built'] and report['cube']['num_examples'] == {'train': 2, 'validation': 1, 'test': 7}
  assert report['cube']['problems'] == []
  assert _tree(raw) == before  # nothing written into the raw folder


def test_prepare_is_idempotent(synthetic):
  raw, data_dir, before, _ = synthetic
  tree = _tree(data_dir)
  again = prepared.prepare('synthetic', raw, data_dir, 'cube')
  assert not again['cube']['built'] and again['cube']['num_examples'] == {'train': 2, 'validation': 1, 'test': 7}
  assert _tree(data_dir) == tree and _tree(raw) == before


def test_workers_prepare_the_same_samples(synthetic, tmp_path):
  raw, data_dir, before, report = synthetic
  again = prepared.prepare('synthetic', raw, tmp_path / 'data', 'cube', workers=2)['cube']
  assert again['num_examples'] == report['cube']['num_examples'] and again['problems'] == report['cube']['problems']
  for split in ('train', 'test'):
    one, two = (prepared.load_split_full('synthetic', d, 'cube', split) for d in (data_dir, tmp_path / 'data'))
    for a, b in zip(one, two, strict=True):
      assert a.keys() == b.keys() and a['name'] == b['name']
      for k, v in a.items():
        if isinstance(v, np.ndarray):
          np.testing.assert_array_equal(v, b[k])
        else:
          assert v == b[k], k
  assert _tree(raw) == before


def test_load_split_order_and_transforms(synthetic):
  raw, data_dir, _, _ = synthetic
  test = prepared.load_split('synthetic', data_dir, 'cube', 'test')
  full = prepared.load_split_full('synthetic', data_dir, 'cube', 'test')
  # algorithms.md §1.1: defect folders sorted, files sorted.
  expected = [f'test/{d.name}/{f.stem}' for d in sorted((raw / 'cube' / 'test').iterdir())
              for f in sorted((d / 'rgb').iterdir())]
  assert [s['name'] for s in full] == expected and len(test) == 7
  for i in range(len(test)):
    s, f = test[i], full[i]
    defect = f['name'].split('/')[1]
    assert s['name'] == f['name'] and s['defect'] == f['defect'] == defect
    assert s['label'] == f['label'] == int(defect != 'good')
    assert f['xyz_orig'] is None  # not stored for test
    assert f['rgb'].shape == (SIZE, SIZE, 3) and f['mask'].shape == (SIZE, SIZE)  # 200 is already square
    assert np.array_equal(s['xyz'], transforms.resize_xyz(f['xyz'])) and s['xyz'].shape == (224, 224, 3)
    assert np.array_equal(s['mask'], transforms.resize_mask(f['mask'])) and s['mask'].any() == (defect != 'good')
    np.testing.assert_array_equal(s['rgb'], transforms.resize_rgb(f['rgb']))
  # Independent recomputation of one defect sample straight from the raw files.
  i = expected.index('test/crack/000')
  folder = raw / 'cube' / 'test' / 'crack'
  ref = preprocessing.preprocess_mvtec(io.read_xyz_tiff(folder / 'xyz' / '000.tiff'),
                                       io.read_rgb_png(folder / 'rgb' / '000.png'),
                                       io.read_mask_png(folder / 'gt' / '000.png'), seed=0)
  assert np.array_equal(full[i]['xyz'], ref.xyz) and np.array_equal(full[i]['rgb'], ref.rgb)
  assert np.array_equal(full[i]['mask'], io.read_mask_png(folder / 'gt' / '000.png'))
  assert full[-1]['name'] == full[len(full) - 1]['name'] and len(full[1:3]) == 2


def test_load_split_full_train_keeps_original_cloud(synthetic):
  raw, data_dir, _, _ = synthetic
  train = prepared.load_split_full('synthetic', data_dir, 'cube', 'train')
  assert [s['name'] for s in train] == ['train/good/000', 'train/good/001']
  for s in train:
    orig = io.read_xyz_tiff(raw / 'cube' / 'train' / 'good' / 'xyz' / f'{s["name"][-3:]}.tiff')
    assert np.array_equal(s['xyz_orig'], preprocessing.pad_square(orig))  # un-preprocessed, padded
    assert transforms.valid_mask(s['xyz']).sum() < 0.5 * transforms.valid_mask(orig).sum()
    assert s['label'] == 0 and not s['mask'].any() and s['problems'] == ()


def test_load_errors(synthetic):
  _, data_dir, _, _ = synthetic
  with pytest.raises(FileNotFoundError, match=r'synthetic/torus/1\.0\.0.*not prepared.*prepare') as e:
    prepared.load_split('synthetic', data_dir, 'torus', 'train')
  assert 'g2sf_jax.data.prepared.prepare(' in str(e.value)  # a function that exists
  with pytest.raises(DataError, match=r"unknown synthetic class 'cone'.*cube, cylinder, torus, sphere"):
    prepared.load_split('synthetic', data_dir, 'cone', 'train')
  with pytest.raises(DataError, match=r"unknown split 'val'"):
    prepared.load_split('synthetic', data_dir, 'cube', 'val')


# Classes with one modality only (RGB-only inspection sets, 3D-only scans).

@pytest.fixture(scope='module')
def single(tmp_path_factory, synthetic):
  """{modality: (raw_dir, data_dir, report)}: the raw files of `synthetic` with only that modality's folders."""
  root = tmp_path_factory.mktemp('single')
  out = {}
  for modality in ('rgb', 'xyz'):
    raw = synthetic_data.generate(root / f'raw_{modality}', ['cube'], n_train=2, n_test=7, size=SIZE, seed=0,
                                  modalities=[modality])
    out[modality] = raw, root / f'data_{modality}', prepared.prepare('synthetic', raw, root / f'data_{modality}')
  return out


@pytest.mark.parametrize('modality', ['rgb', 'xyz'])
def test_single_modality_prepare_and_load(synthetic, single, modality):
  both_raw, both_data, _, _ = synthetic
  raw, data_dir, report = single[modality]
  missing = {'rgb': 'xyz', 'xyz': 'rgb'}[modality]
  assert report['cube']['built'] and report['cube']['modalities'] == (modality,)
  assert report['cube']['num_examples'] == {'train': 2, 'validation': 1, 'test': 7}
  assert report['cube']['problems'] == []
  assert prepared.available_modalities('synthetic', data_dir, 'cube') == (modality,)
  assert prepared.available_modalities('synthetic', both_data, 'cube') == ('rgb', 'xyz')
  meta = json.loads((prepared.prepared_dir('synthetic', data_dir, 'cube') / 'metadata.json').read_text())
  assert meta['modalities'] == [modality]

  for split in data.kind.SPLITS:
    model, full = prepared.load_split('synthetic', data_dir, 'cube', split), prepared.load_split_full(
        'synthetic', data_dir, 'cube', split)
    ref_model, ref_full = prepared.load_split('synthetic', both_data, 'cube', split), prepared.load_split_full(
        'synthetic', both_data, 'cube', split)
    assert [s['name'] for s in full] == [s['name'] for s in ref_full] and len(model) == len(ref_model)
    for m, f, rm, rf in zip(model, full, ref_model, ref_full):
      assert set(m) == {modality, 'mask', 'has_mask', 'label', 'defect', 'name'}
      extra = {'xyz_orig'} if modality == 'xyz' else set()
      assert set(f) == {modality, 'mask', 'has_mask', 'label', 'defect', 'name', 'problems', 'raw_size'} | extra
      with pytest.raises(KeyError, match=repr(missing)):
        features._stack([m], missing, 1)  # a caller that needs the missing modality fails, naming it
      assert (m['label'], m['defect'], m['name']) == (rm['label'], rm['defect'], rm['name'])
      assert m['label'] == int(m['defect'] != 'good') and m['mask'].any() == bool(m['label'])
      assert np.array_equal(m['mask'], rm['mask']) and np.array_equal(f['mask'], rf['mask'])
      folder = raw / 'cube' / f['name'].rsplit('/', 1)[0]
      stem = f['name'].rsplit('/', 1)[1]
      if modality == 'xyz':  # algorithms.md §1.2 on the cloud alone: the same cloud as with the image, plane removed
        orig = io.read_xyz_tiff(folder / 'xyz' / f'{stem}.tiff')
        assert np.array_equal(f['xyz'], rf['xyz']) and np.array_equal(m['xyz'], rm['xyz'])
        assert transforms.valid_mask(f['xyz']).sum() < 0.5 * transforms.valid_mask(orig).sum()
        if split == 'train':
          assert np.array_equal(f['xyz_orig'], preprocessing.pad_square(orig))
        else:
          assert f['xyz_orig'] is None
      else:  # image as stored in the raw folder: no plane to remove, background kept
        rgb = io.read_rgb_png(folder / 'rgb' / f'{stem}.png')
        assert np.array_equal(f['rgb'], rgb) and np.array_equal(m['rgb'], transforms.resize_rgb(rgb))
        assert not np.array_equal(f['rgb'], rf['rgb'])  # the two-modality image has a black background


def test_single_modality_prepare_is_idempotent(single):
  raw, data_dir, _ = single['xyz']
  tree = _tree(data_dir)
  again = prepared.prepare('synthetic', raw, data_dir, 'cube')['cube']
  assert not again['built'] and again['modalities'] == ('xyz',)
  assert _tree(data_dir) == tree


def test_available_modalities_of_older_preparations_and_errors(synthetic, tmp_path):
  _, data_dir, _, _ = synthetic
  old = tmp_path / 'old'
  shutil.copytree(data_dir, old)
  meta = prepared.prepared_dir('synthetic', old, 'cube') / 'metadata.json'
  stored = json.loads(meta.read_text())
  del stored['modalities']  # prepared before single-modality classes existed: both
  meta.write_text(json.dumps(stored))
  assert prepared.available_modalities('synthetic', old, 'cube') == ('rgb', 'xyz')
  assert set(prepared.load_split('synthetic', old, 'cube', 'train')[0]) >= {'rgb', 'xyz'}
  meta.write_text(json.dumps(dict(stored, modalities=['depth'])))
  with pytest.raises(DataError, match=re.escape(f'{meta}: modalities')):
    prepared.available_modalities('synthetic', old, 'cube')
  with pytest.raises(FileNotFoundError, match='not prepared'):
    prepared.available_modalities('synthetic', old, 'torus')


# Bad MVTec inputs: each names the offending file or folder, and leaves nothing half-prepared.

@pytest.fixture(scope='module')
def mvtec_raw(tmp_path_factory):
  """An MVTec-layout 'bagel' made of one synthetic train sample and two test folders."""
  root = tmp_path_factory.mktemp('mvtec')
  synthetic_data.generate(root / 'gen', ['cube'], n_train=1, n_test=7, size=SIZE, seed=1)
  raw = root / 'raw' / 'bagel'
  shutil.copytree(root / 'gen' / 'cube' / 'train', raw / 'train')
  for folder in ('good', 'crack'):
    shutil.copytree(root / 'gen' / 'cube' / 'test' / folder, raw / 'test' / folder)
  return raw.parent


def _break(raw, tmp_path, how):
  bad = tmp_path / 'raw'
  shutil.copytree(raw, bad)
  bagel = bad / 'bagel'
  if how == 'truncated tiff':
    path = bagel / 'train/good/xyz/000.tiff'
    path.write_bytes(path.read_bytes()[:5000])
  elif how == 'corrupt png':
    path = bagel / 'test/crack/rgb/000.png'
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(range(256)) * 4)
  elif how == 'size mismatch':
    path = bagel / 'train/good/rgb/000.png'
    Image.fromarray(np.zeros((SIZE, SIZE - 10, 3), np.uint8)).save(path)
  elif how == 'wrong dtype':
    path = bagel / 'train/good/xyz/000.tiff'
    tifffile.imwrite(path, np.ones((SIZE, SIZE, 3), np.float64))
  elif how == 'wrong channels':
    path = bagel / 'test/good/xyz/000.tiff'
    tifffile.imwrite(path, np.ones((SIZE, SIZE, 4), np.float32))
  elif how == 'missing gt':
    path = bagel / 'test/crack/gt/000.png'
    path.unlink()
  elif how == 'empty folder':
    path = bagel / 'test/crack'
    shutil.rmtree(path)
    (path / 'rgb').mkdir(parents=True)
  elif how == 'mixed folder':  # test/crack without point clouds while every other folder has them
    path = bagel / 'test/crack/xyz'
    shutil.rmtree(path)
  elif how == 'image-only train':  # the first folder decides: the first test folder with clouds is named
    shutil.rmtree(bagel / 'train/good/xyz')
    path = bagel / 'test/crack/xyz'
  elif how == 'mixed sample':  # one image without its point cloud
    shutil.copy(bagel / 'train/good/rgb/000.png', bagel / 'train/good/rgb/001.png')
    path = bagel / 'train/good/xyz/001.tiff'
  elif how == 'missing class':
    path = bagel
    shutil.rmtree(path)
  return bad, path


@pytest.mark.parametrize('how, what', [
    ('truncated tiff', 'cannot decode TIFF'),
    ('corrupt png', 'cannot decode image'),
    ('size mismatch', 'image size (200, 190) differs from its point cloud'),
    ('wrong dtype', 'dtype float64, expected'),
    ('wrong channels', 'shape (200, 200, 4), expected'),
    ('missing gt', 'missing ground truth for the defect sample'),
    ('empty folder', 'no samples'),
    ('missing class', 'class folder not found'),
    ('mixed folder', 'this folder has no xyz/*.tiff but'),
    ('image-only train', 'this folder has xyz/*.tiff but'),
    ('mixed sample', 'missing point cloud (the sample exists as'),
])
def test_bad_mvtec_inputs_name_the_file(mvtec_raw, tmp_path, how, what):
  bad, path = _break(mvtec_raw, tmp_path, how)
  before = _tree(bad)
  workers = 2 if how == 'truncated tiff' else 1  # a worker's error too
  with pytest.raises(DataError, match=re.escape(what)) as e:
    prepared.prepare('mvtec3d', bad, tmp_path / 'data', ['bagel'], workers=workers)
  assert str(path) in str(e.value)
  assert not prepared.is_prepared('mvtec3d', tmp_path / 'data', 'bagel')
  assert _tree(bad) == before


def test_unknown_dataset_and_class(tmp_path):
  with pytest.raises(DataError, match=r"unknown mvtec3d class 'bagle'.*bagel, cable_gland"):
    prepared.prepare('mvtec3d', tmp_path, tmp_path / 'data', ['bagle'])
  with pytest.raises(DataError, match=r"unknown dataset 'mvtec'.*mvtec3d, folder, eyecandies, synthetic"):
    prepared.prepare('mvtec', tmp_path, tmp_path / 'data')
  with pytest.raises(DataError, match=re.escape(f'{tmp_path / "nothing"}: raw eyecandies folder not found')):
    prepared.prepare('eyecandies', tmp_path / 'nothing', tmp_path / 'data')


# Eyecandies in its raw layout.

_POSE = np.array([[1, 0, 0, 0.05], [0, 1, 0, 0.03], [0, 0, 1, 0], [0, 0, 0, 1]])  # shifted: no exact 0 row/column


def _eyecandies_scene(seed, box):
  """16-bit depth of a tilted table seen from above, with an optional box 0.3 units nearer the camera."""
  rng = np.random.default_rng(seed)
  v = np.mgrid[0:512, 0:512][0]
  yn = (v - 256) / 711.11
  depth = 1.0 / (1 + 1.0 * yn) + rng.normal(0, 1e-4, (512, 512))
  if box:
    depth[180:330, 190:320] -= 0.3
  return np.round((depth - 0.5) / 1.5 * 65535).astype(np.uint16)  # normalisation min 0.5, max 2.0


def _write_eyecandies_sample(folder, sample_id, seed, mask):
  folder.mkdir(parents=True, exist_ok=True)
  depth16 = _eyecandies_scene(seed, box=True)
  io.write_png(folder / f'{sample_id}_depth.png', depth16)
  (folder / f'{sample_id}_info_depth.yaml').write_text(yaml.safe_dump({'normalization': {'min': 0.5, 'max': 2.0}}))
  np.savetxt(folder / f'{sample_id}_pose.txt', _POSE)
  rgb = np.random.default_rng(seed).integers(1, 255, (512, 512, 3), dtype=np.uint8)
  io.write_png(folder / f'{sample_id}_image_4.png', rgb)  # the only image used (algorithms.md §1.3)
  extra = [f'image_{k}.png' for k in (0, 1, 2, 3, 5)] + [
      'normals.png', 'info_normals.yaml', 'metadata.yaml', 'bumps_mask.png', 'colors_mask.png', 'dents_mask.png',
      'normals_mask.png']
  for name in extra:
    (folder / f'{sample_id}_{name}').write_bytes(b'unused')
  if mask is not None:
    io.write_png(folder / f'{sample_id}_mask.png', mask)
  return depth16


def test_eyecandies_prepare_and_load(tmp_path):
  raw = tmp_path / 'raw'
  cls = raw / 'CandyCane'
  depths = {}
  for i in range(2):
    depths[f'train/good/{i:03d}'] = _write_eyecandies_sample(cls / 'train' / 'data', f'{i:03d}', i,
                                                              np.zeros((512, 512), np.uint8))
  bad_mask = np.zeros((512, 512), np.uint8)
  bad_mask[200:240, 200:260] = 255
  for i, mask in enumerate([bad_mask, np.zeros((512, 512), np.uint8), bad_mask, None]):
    name = f'test/{"bad" if mask is not None and mask.any() else "good"}/{i:03d}'
    depths[name] = _write_eyecandies_sample(cls / 'test_public' / 'data', f'{i:02d}', 10 + i, mask)
  assert len(list((cls / 'train' / 'data').iterdir())) == 2 * 17
  before = _tree(raw)

  report = prepared.prepare('eyecandies', raw, tmp_path / 'data', 'CandyCane')['CandyCane']
  assert report['num_examples'] == {'train': 1, 'validation': 1, 'test': 3}  # no val/: one training scan held out
  assert prepared.validation_source('eyecandies', tmp_path / 'data', 'CandyCane') == 'holdout'
  assert len(report['problems']) == 1 and report['problems'][0].startswith('test/?/003: missing_mask')
  assert _tree(raw) == before

  test = prepared.load_split_full('eyecandies', tmp_path / 'data', 'CandyCane', 'test')
  assert [s['name'] for s in test] == ['test/bad/000', 'test/bad/002', 'test/good/001']  # bad before good
  assert [s['label'] for s in test] == [1, 1, 0]
  model = prepared.load_split('eyecandies', tmp_path / 'data', 'CandyCane', 'test')
  for s, m in zip(test, model):
    ref = preprocessing.remove_point_cloud_background(
        preprocessing.eyecandies_depth_to_xyz(depths[s['name']], 0.5, 2.0, _POSE)).reshape(512, 512, 3)
    assert np.array_equal(s['xyz'], ref.astype(np.float32)) and s['xyz'].shape == (512, 512, 3)
    assert s['xyz_orig'] is s['xyz'] or np.array_equal(s['xyz_orig'], s['xyz'])
    valid = transforms.valid_mask(s['xyz'])
    assert valid[180:330, 190:320].all() and valid.sum() == 150 * 130  # box kept, table removed
    assert (s['xyz'][~valid][:, 0] == 0).all()
    sid = s['name'][-2:]
    raw_rgb = io.read_rgb_png(cls / 'test_public' / 'data' / f'{sid}_image_4.png')
    assert np.array_equal(s['rgb'], raw_rgb)  # stored as is
    np.testing.assert_array_equal(
        m['rgb'], transforms.resize_rgb(np.where(valid[..., None], raw_rgb, 0).astype(np.uint8)))
    assert m['mask'].any() == (s['label'] == 1)
    # What predict does with the same raw files (the kind's entry for the path prefix): the stored arrays exactly.
    scan = data.get('eyecandies').load_entry(eyecandies.scan_entry(sample=cls / 'test_public' / 'data' / sid), False)
    assert np.array_equal(scan.xyz, s['xyz']) and np.array_equal(scan.rgb, s['rgb'])
  folder = eyecandies.scan_folder(cls / 'test_public' / 'data')
  assert [e.name for e in folder] == ['data/00', 'data/01', 'data/02', 'data/03']


def test_a_singular_pose_names_its_file(tmp_path):
  from g2sf_jax.data import eyecandies
  np.savetxt(tmp_path / '000_pose.txt', np.zeros((4, 4)))
  with pytest.raises(DataError, match=r'000_pose.txt: the camera pose is not an invertible 4x4 matrix'):
    eyecandies.read_pose(tmp_path / '000_pose.txt')
  np.savetxt(tmp_path / '001_pose.txt', _POSE)
  np.testing.assert_array_equal(eyecandies.read_pose(tmp_path / '001_pose.txt'), _POSE)
