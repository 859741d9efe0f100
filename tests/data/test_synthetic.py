"""The synthetic dataset: exact MVTec 3D-AD layout, deterministic, defects change only their modality."""
import hashlib
import json

import numpy as np
import pytest

from g2sf_jax import io
from g2sf_jax.data import preprocessing, synthetic as sd
from g2sf_jax.data.transforms import valid_mask

SIZE = 160


def _tree(root):
  """{relative path: sha256} of every file under root (but the manifest's cache of file metadata)."""
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob('*')) if p.is_file() and p.name != '.stat.json'}


def test_layout_counts_and_readable(tmp_path):
  root = sd.generate(tmp_path / 'raw', 'cube,torus', n_train=4, n_test=9, size=SIZE, seed=0)
  assert sorted(p.name for p in root.iterdir()) == ['cube', 'torus']
  cube = root / 'cube'
  assert sorted(p.name for p in cube.iterdir()) == ['.stat.json', 'manifest.json', 'synthetic.json', 'test', 'train',
                                                    'validation']
  assert sorted(p.name for p in (cube / 'test').iterdir()) == sorted(('good',) + sd.DEFECTS)
  assert [p.name for p in (cube / 'train').iterdir()] == ['good']
  assert sorted(p.name for p in (cube / 'train' / 'good').iterdir()) == ['rgb', 'xyz']  # no gt for train
  assert sorted(p.name for p in (cube / 'train' / 'good' / 'rgb').iterdir()) == ['000.png', '001.png', '002.png',
                                                                                 '003.png']
  assert len(list((cube / 'validation' / 'good' / 'xyz').iterdir())) == 1
  counts = {d.name: len(list((d / 'gt').iterdir())) for d in (cube / 'test').iterdir()}
  assert sum(counts.values()) == 9 and counts['good'] == 2 and counts['bump'] == 2 and counts['stain'] == 1
  for folder in (cube / 'test').iterdir():
    for stem in ('000',):
      rgb = io.read_rgb_png(folder / 'rgb' / f'{stem}.png')
      xyz = io.read_xyz_tiff(folder / 'xyz' / f'{stem}.tiff')
      gt = io.read_mask_png(folder / 'gt' / f'{stem}.png')
      assert rgb.shape == (SIZE, SIZE, 3) and xyz.shape == (SIZE, SIZE, 3) and gt.shape == (SIZE, SIZE)
      assert set(np.unique(gt)) <= {0, 255}
      assert (gt.any()) == (folder.name != 'good')  # test/good has an all-zero gt


def test_deterministic_and_idempotent(tmp_path):
  a = _tree(sd.generate(tmp_path / 'a', ['cylinder'], 2, 7, SIZE, seed=3))
  b = _tree(sd.generate(tmp_path / 'b', ['cylinder'], 2, 7, SIZE, seed=3))
  assert a == b
  c = _tree(sd.generate(tmp_path / 'c', ['cylinder'], 2, 7, SIZE, seed=4))
  assert c.keys() == a.keys() and c != a
  stamp = (tmp_path / 'a' / 'cylinder' / 'train' / 'good' / 'xyz' / '000.tiff').stat().st_mtime_ns
  sd.generate(tmp_path / 'a', ['cylinder'], 2, 7, SIZE, seed=3)  # same parameters: kept as is
  assert (tmp_path / 'a' / 'cylinder' / 'train' / 'good' / 'xyz' / '000.tiff').stat().st_mtime_ns == stamp
  assert json.loads((tmp_path / 'a' / 'cylinder' / 'synthetic.json').read_text())['seed'] == 3
  with pytest.raises(FileExistsError, match='not generated with'):
    sd.generate(tmp_path / 'a', ['cylinder'], 2, 7, SIZE, seed=5)
  assert not [p for p in (tmp_path / 'a').iterdir() if p.name.startswith('.')]  # no temporary folder left
  assert _tree(sd.generate(tmp_path / 'a', ['cylinder'], 2, 7, SIZE, seed=4, replace=True)) == c  # regenerated whole


def test_workers_write_the_same_files(tmp_path):
  one = _tree(sd.generate(tmp_path / 'one', ['torus'], 3, 7, SIZE, seed=2))
  assert _tree(sd.generate(tmp_path / 'two', ['torus'], 3, 7, SIZE, seed=2, workers=2)) == one


def test_replace_never_touches_a_folder_it_did_not_generate(tmp_path):
  (tmp_path / 'cube' / 'train').mkdir(parents=True)
  (tmp_path / 'cube' / 'train' / 'mine.txt').write_text('user data')
  with pytest.raises(FileExistsError, match='not generated with'):
    sd.generate(tmp_path, ['cube'], 1, 2, SIZE, seed=0, replace=True)
  assert (tmp_path / 'cube' / 'train' / 'mine.txt').read_text() == 'user data'


def test_single_modality_writes_the_same_files_minus_one_folder(tmp_path):
  both = _tree(sd.generate(tmp_path / 'both', ['sphere'], 2, 7, SIZE, seed=2))
  for modalities, kept, dropped in [(('rgb',), 'rgb', 'xyz'), ('xyz', 'xyz', 'rgb'), ('xyz+rgb', None, None)]:
    out = tmp_path / f'only_{kept}'
    tree = _tree(sd.generate(out, ['sphere'], 2, 7, SIZE, seed=2, modalities=modalities))
    meta = ('synthetic.json', 'manifest.json', '.stat.json')
    files = {k: v for k, v in tree.items() if not k.endswith(meta)}
    expected = {k: v for k, v in both.items() if not k.endswith(meta)
                and (dropped is None or f'/{dropped}/' not in k)}
    assert files == expected, modalities  # identical bytes, one folder kind fewer
    if dropped:
      assert not list(out.rglob(dropped)) and list(out.rglob(f'{kept}/000.*'))
      assert len(list(out.rglob('gt/*.png'))) == 7  # ground truth as usual
    params = json.loads((out / 'sphere' / 'synthetic.json').read_text())
    assert params['modalities'] == ([kept] if kept else ['rgb', 'xyz'])
  with pytest.raises(FileExistsError, match='not generated with'):  # same folder, other modalities: refused
    sd.generate(tmp_path / 'only_rgb', ['sphere'], 2, 7, SIZE, seed=2, modalities=['xyz'])
  for bad in ('depth', (), 'rgb,normals'):
    with pytest.raises(ValueError, match='modalities must be'):
      sd.generate(tmp_path / 'bad', ['sphere'], 2, 7, SIZE, seed=2, modalities=bad)


def test_an_edited_generated_file_is_generated_again_only_where_that_is_allowed(tmp_path):
  root = sd.generate(tmp_path, ['cube'], 1, 2, 64, seed=0)
  before = _tree(root)
  tiff = root / 'cube' / 'train' / 'good' / 'xyz' / '000.tiff'
  tiff.write_bytes(tiff.read_bytes()[:-8] + bytes(8))
  with pytest.raises(FileExistsError, match='or whose files were edited'):
    sd.generate(tmp_path, ['cube'], 1, 2, 64, seed=0)  # a folder the caller owns: refused, not silently used
  assert _tree(sd.generate(tmp_path, ['cube'], 1, 2, 64, seed=0, replace=True)) == before  # the runner's own


def test_unknown_class_lists_supported(tmp_path):
  with pytest.raises(ValueError, match='unknown synthetic class .pyramid.*cube, cylinder, torus, sphere'):
    sd.generate(tmp_path, 'cube,pyramid', 1, 1, SIZE, 0)
  assert not (tmp_path / 'cube').exists()  # validated before anything is written


@pytest.mark.parametrize('shape', sd.SHAPES)
def test_defects_change_only_their_modality(shape):
  rgb0, xyz0, gt0 = sd.render_sample(shape, 'good', 200, seed=(7, 1))
  assert not gt0.any()
  obj = preprocessing.preprocess_mvtec(xyz0, rgb0, gt0, seed=0)
  object_area = valid_mask(obj.xyz).sum()
  for defect, kind in sd.DEFECT_KINDS.items():
    rgb, xyz, gt = sd.render_sample(shape, defect, 200, seed=(7, 1))
    mask = gt > 0
    valid = valid_mask(xyz0)
    rgb_changed = (rgb != rgb0).any(-1)
    xyz_changed = (xyz != xyz0).any(-1)
    assert np.array_equal(valid, valid_mask(xyz))  # same sensor holes
    assert not rgb_changed[~mask].any() and not xyz_changed[~mask].any(), defect
    if kind in ('geometry', 'both'):
      assert np.array_equal(xyz_changed, mask & valid), defect  # the gt is exactly the changed region
    else:
      assert not xyz_changed.any(), defect
    if kind in ('colour', 'both'):
      assert rgb_changed[mask].mean() > 0.97, defect
    else:
      assert not rgb_changed.any(), defect
    assert 0.005 < mask.sum() / object_area < 0.06, (defect, mask.sum(), object_area)
    if kind != 'colour':
      lift = np.abs(np.linalg.norm(xyz - xyz0, axis=-1))[mask & valid]
      assert np.median(lift) > 1e-3, defect  # millimetres: well above the 0.2 mm sensor noise


def test_preprocessing_keeps_object_and_defect():
  rgb, xyz, gt = sd.render_sample('torus', 'dent', 200, seed=11)
  out = preprocessing.preprocess_mvtec(xyz, rgb, gt, seed=0)
  assert out.problems == ()
  kept = valid_mask(out.xyz)
  mask = gt > 0
  assert kept[mask & valid_mask(xyz)].mean() > 0.95  # the defect lies on the kept object
  assert 0.1 < kept.mean() < 0.5  # the plane (most of the image) is gone, the object is not
