"""An inspection engineer's own part: any class folder, good parts only to train on, calibrated decisions."""
import json
import shutil

import numpy as np
import pytest

from experiments import predict, runner
from experiments.configs import synthetic
from g2sf_jax import detector, io, ply
from g2sf_jax.data import folder, synthetic as generated
from g2sf_jax.errors import DataError


@pytest.fixture(scope='module')
def scans(tmp_path_factory):
  """A generated class to copy parts from: 6 good training scans, 2 validation, 7 test scans (1 good, 6 defects)."""
  root = tmp_path_factory.mktemp('gen')
  generated.generate(root, ['cube'], n_train=6, n_test=14, size=160, seed=0)
  return root / 'cube'


def _config(workdir, raw_dir, method='patchcore'):
  c = synthetic.get_config()
  c.dataset, c.raw_dir, c.workdir, c.method = 'folder', str(raw_dir), str(workdir), method
  c.checkpoints.efficientnet_lite0 = str(workdir.parent / 'checkpoints' / 'efficientnet_lite0')
  c.batch_size = 4
  return c


def test_good_parts_only_train_calibrate_and_predict(scans, tmp_path):
  """A class named 'bracket' with nothing but train/good: a seeded part is held out for calibration, the run
  finishes without any test set, and predict decides on new scans."""
  part = tmp_path / 'raw' / 'bracket'
  shutil.copytree(scans / 'train', part / 'train')
  config = _config(tmp_path / 'w', tmp_path / 'raw')
  config.calibration.holdout = 0.34
  table = runner.run(config)
  assert table['rows'] == ['IMG', 'PCD'] and table['classes']['bracket'] == {'IMG': {}, 'PCD': {}}
  run = detector.Run(tmp_path / 'w')
  assert run.classes == ('bracket',)
  log = (tmp_path / 'w' / 'run.log').read_text()
  assert 'calibrate bracket: 2 validation scans (holdout, 0 defective), rule good_quantile' in log
  results = (tmp_path / 'w' / 'patchcore' / 'report' / 'results.md').read_text()
  assert 'bracket: no test scans: no metrics' in results and 'held-out training scans' in results
  assert 'Decisions at the calibrated threshold' not in results and '## Mean over classes\n' in results
  assert 'bracket: only 2 good scans to calibrate on: the thresholds are rough' in results
  out = predict.main(['--workdir', str(tmp_path / 'w'), '--scans', str(scans / 'test' / 'crack'),
                      str(scans / 'test' / 'good'), '--out', str(tmp_path / 'decided'), '--ply'])
  labels = {r['scan']: r['label'] for r in out['scans']}
  assert set(labels.values()) <= {'good', 'defect'} and labels['crack/000'] == 'defect'
  table = (tmp_path / 'decided' / 'scores.csv').read_text().splitlines()
  assert table[0].startswith('scan,status,label,score,raw_score,threshold,defect_pixels,regions,raw_IMG,raw_PCD')
  assert len(table) == 1 + len(out['scans'])
  points, scores = ply.read(tmp_path / 'decided' / out['scans'][0]['ply'])
  assert len(points) == len(scores) > 0 and 0 <= scores.min() <= scores.max() <= 1


def test_a_good_only_test_set_reports_the_false_reject_rate(scans, tmp_path):
  part = tmp_path / 'raw' / 'shim'
  shutil.copytree(scans / 'train', part / 'train')
  shutil.copytree(scans / 'validation', part / 'validation')  # read as it is: nothing held out
  shutil.copytree(scans / 'test' / 'good', part / 'test' / 'good')
  table = runner.run(_config(tmp_path / 'w', tmp_path / 'raw'))
  assert table['classes']['shim']['IMG'] == {}  # no AUROC, no AUPRO: there is no defect to find
  decided = table['decisions']['shim']
  assert decided['IMG']['TP'] == decided['IMG']['FN'] == 0 and 'false_reject_rate' in decided['IMG']
  assert decided['IMG']['FP'] + decided['IMG']['TN'] == len(list((scans / 'test' / 'good' / 'rgb').iterdir()))
  assert 'escape_rate' not in decided['IMG'] and 'recall' not in decided['IMG'] and 'F1' not in decided['IMG']
  report = (tmp_path / 'w' / 'patchcore' / 'report' / 'results.md').read_text()
  assert 'good test scans only: the false-reject rate' in report and 'validation scans' in report


def test_defects_without_masks_count_for_the_image_metrics_only(scans, tmp_path):
  part = tmp_path / 'raw' / 'lid'
  shutil.copytree(scans / 'train', part / 'train')
  shutil.copytree(scans / 'validation', part / 'validation')
  shutil.copytree(scans / 'test' / 'good', part / 'test' / 'good')
  shutil.copytree(scans / 'test' / 'crack', part / 'test' / 'crack', ignore=shutil.ignore_patterns('gt'))
  table = runner.run(_config(tmp_path / 'w', tmp_path / 'raw'))
  assert set(table['classes']['lid']['PCD']) == {'I-AUROC'}
  assert 'no mask: they count for the image metrics only (no pixel metrics)' in json.dumps(table['notes'])


def test_a_chosen_threshold_changes_the_decision_only(scans, tmp_path):
  part = tmp_path / 'raw' / 'bolt'
  shutil.copytree(scans / 'train', part / 'train')
  shutil.copytree(scans / 'validation', part / 'validation')
  runner.run(_config(tmp_path / 'w', tmp_path / 'raw'))
  scan = ['--workdir', str(tmp_path / 'w'), '--rgb', str(scans / 'test' / 'good' / 'rgb' / '000.png'),
          '--xyz', str(scans / 'test' / 'good' / 'xyz' / '000.tiff')]
  usual = predict.main(scan + ['--out', str(tmp_path / 'a.png'), '--mask', str(tmp_path / 'a_mask.png')])
  strict = predict.main(scan + ['--out', str(tmp_path / 'b.png'), '--mask', str(tmp_path / 'b_mask.png'),
                                '--threshold', str(usual['score'] / 2)])
  assert strict['image_scores'] == usual['image_scores'] and strict['score'] == usual['score']
  assert io.read_mask_png(tmp_path / 'a.png').tolist() == io.read_mask_png(tmp_path / 'b.png').tolist()  # same map
  assert usual['label'] == 'good' and strict['label'] == 'defect'
  assert strict['defect_pixels'] >= usual['defect_pixels']
  with pytest.raises(SystemExit):
    predict.main(scan + ['--out', str(tmp_path / 'c.png'), '--threshold', '1.5'])


@pytest.mark.parametrize('layout, message', [
    ('no_train', r'bad/train: folder not found \(expected the layout <class>/train'),
    ('defect_in_train', r'bad/train/crack: training data are good parts only'),
    ('mixed_modalities', r'bad/test/crack/xyz: this folder has no xyz/\*\.tiff but .*holds rgb/\*\.png and xyz'),
    ('unpaired', r'bad/train/good/xyz/001\.tiff: missing point cloud'),
])
def test_malformed_layouts_name_the_path(scans, tmp_path, layout, message):
  part = tmp_path / 'raw' / 'bad'
  shutil.copytree(scans / 'train', part / 'train')
  if layout == 'no_train':
    shutil.rmtree(part / 'train')
    (part / 'test').mkdir()
  elif layout == 'defect_in_train':
    shutil.copytree(scans / 'test' / 'crack', part / 'train' / 'crack')
  elif layout == 'mixed_modalities':
    shutil.copytree(scans / 'test' / 'crack', part / 'test' / 'crack')
    shutil.rmtree(part / 'test' / 'crack' / 'xyz')
  else:
    (part / 'train' / 'good' / 'xyz' / '001.tiff').unlink()
  with pytest.raises(DataError, match=message):
    folder.KIND.list_class(part)


def test_any_class_folder_is_a_class_and_the_mvtec_kind_stays_strict(scans, tmp_path):
  from g2sf_jax import data
  shutil.copytree(scans / 'train', tmp_path / 'raw' / 'bracket' / 'train')
  shutil.copytree(scans / 'train', tmp_path / 'raw' / 'hinge' / 'train')
  assert data.resolve_classes('folder', None, tmp_path / 'raw') == ('bracket', 'hinge')
  with pytest.raises(DataError, match=r"unknown folder class 'gear' in .*raw; expected one of bracket, hinge"):
    data.resolve_classes('folder', 'gear', tmp_path / 'raw')
  assert data.resolve_classes('mvtec3d', None, tmp_path / 'raw') == ('bracket', 'hinge')  # any name on disk
  with pytest.raises(DataError, match=r'bracket/test: folder not found'):  # but MVTec 3D-AD needs its test set
    data.get('mvtec3d').list_class(tmp_path / 'raw' / 'bracket')
  crack = tmp_path / 'raw' / 'bracket' / 'test' / 'crack'
  shutil.copytree(scans / 'test' / 'crack', crack)
  (crack / 'gt' / '000.png').unlink()
  with pytest.raises(DataError, match=r'crack/gt/000\.png: missing ground truth'):
    data.get('mvtec3d').list_class(tmp_path / 'raw' / 'bracket')
  listing = folder.KIND.list_class(tmp_path / 'raw' / 'bracket')  # the folder kind takes what it finds
  assert [e.gt is None for e in listing.splits['test']][:1] == [True]
  assert np.all([e.defect == 'good' for e in listing.splits['train']])
