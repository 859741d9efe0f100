"""The whole runner on a tiny synthetic set: every stage, caching and resumption, the report, and predict.

One module-scoped run (about a minute here) feeds every test.
"""
import dataclasses
import json
import os
import shutil
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from experiments import pipeline, predict
from experiments.configs import synthetic
from g2sf_jax import io
from g2sf_jax.data import prepared
from g2sf_jax.workdir import Workdir

STAGE_FILES = ('prepare', 'extract', 'patchcore/banks', 'g2sf/fusion_data', 'g2sf/train', 'g2sf/evaluate')


def tiny_config(workdir):
  c = synthetic.get_config()
  c.workdir = str(workdir)
  c.checkpoints.efficientnet_lite0 = str(workdir / 'checkpoints' / 'efficientnet_lite0')
  c.synthetic.classes = 'cube'
  c.synthetic.size = 200
  c.synthetic.n_train = 6
  c.synthetic.n_test = 8
  c.synthesis.num_anomalies = 8
  c.g2sf.epochs = 2
  c.batch_size = 4
  return c


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run')
  config = tiny_config(workdir)
  return config, pipeline.run(config)


def _markers(workdir, stages=STAGE_FILES):
  return {s: os.stat(Workdir(workdir).marker(s, 'cube')).st_mtime_ns for s in stages}


def test_every_stage_ran_and_reported(finished):
  config, table = finished
  workdir = config.workdir
  assert table['rows'] == ['IMG', 'PCD', 'FUS']
  for row in table['rows']:
    values = table['classes']['cube'][row]
    assert set(values) == {'I-AUROC', 'P-AUROC', 'AUPRO@30%', 'AUPRO@10%', 'AUPRO@5%', 'AUPRO@1%'}
    assert all(0 <= v <= 1 for v in values.values())
  on_disk = json.loads(open(f'{workdir}/g2sf/report/results.json').read())
  assert on_disk['classes'] == table['classes']
  html = open(f'{workdir}/g2sf/report/report.html').read()
  assert 'cube/roc.png' in html and 'overlays/' in html
  assert os.path.getsize(f'{workdir}/run.log') > 0
  assert json.loads(open(f'{workdir}/g2sf/config.json').read())['dataset'] == 'synthetic'


def test_rerun_skips_finished_stages(finished):
  config, table = finished
  before = _markers(Path(config.workdir))
  again = pipeline.run(config)
  assert _markers(Path(config.workdir)) == before
  assert again['classes'] == table['classes']


def test_changed_scoring_field_reruns_only_evaluation(finished):
  config, _ = finished
  workdir = Path(config.workdir)
  before = _markers(workdir)
  changed = tiny_config(workdir)
  changed.g2sf.scoring_mode = 'max'
  changed.stages = 'evaluate'
  pipeline.run(changed)
  after = _markers(workdir)
  assert after['g2sf/evaluate'] != before['g2sf/evaluate']
  assert {s: after[s] for s in STAGE_FILES[:-1]} == {s: before[s] for s in STAGE_FILES[:-1]}
  pipeline.run(tiny_config(workdir))  # back to the module's configuration for the other tests


def test_stage_keys_follow_backbone_parameters_and_code_versions(tmp_path, monkeypatch):
  keys = {s: pipeline.Runner(tiny_config(tmp_path)).key(s, 'cube') for s in STAGE_FILES}
  changed = tiny_config(tmp_path)
  changed.fpfh = ml_collections.ConfigDict({'feature_max_nn': 90})  # only the point backbone's meta differs
  other = pipeline.Runner(changed)
  assert other.key('prepare', 'cube') == keys['prepare']
  assert all(other.key(s, 'cube') != keys[s] for s in STAGE_FILES[1:])
  monkeypatch.setattr(pipeline, 'EXTRACT', dataclasses.replace(pipeline.EXTRACT, version=pipeline.EXTRACT.version + 1))
  bumped = pipeline.Runner(tiny_config(tmp_path))
  assert bumped.key('prepare', 'cube') == keys['prepare']
  assert all(bumped.key(s, 'cube') != keys[s] for s in STAGE_FILES[1:])


def test_stage_keys_hash_only_the_fields_a_stage_declares(tmp_path):
  keys = {s: pipeline.Runner(tiny_config(tmp_path)).key(s, 'cube') for s in STAGE_FILES}

  def changed_stages(config):
    runner = pipeline.Runner(config)
    return {s for s in STAGE_FILES if runner.key(s, 'cube') != keys[s]}

  scoring = tiny_config(tmp_path)
  scoring.g2sf.scoring_mode = 'max'  # read by G²SF's scorer only
  assert changed_stages(scoring) == {'g2sf/evaluate'}
  training = tiny_config(tmp_path)
  training.g2sf.epochs = 3
  assert changed_stages(training) == {'g2sf/train', 'g2sf/evaluate'}
  coreset = tiny_config(tmp_path)
  coreset.memory_bank.coreset_fraction = 0.2
  assert changed_stages(coreset) == set(STAGE_FILES[2:])


def test_missing_upstream_names_the_command(tmp_path):
  config = tiny_config(tmp_path)
  config.stages = 'extract'
  with pytest.raises(FileNotFoundError, match='--config.stages=prepare'):
    pipeline.run(config)


def test_predict_gives_the_evaluation_score(finished, tmp_path):
  config, _ = finished
  workdir = Path(config.workdir)
  sample = prepared.load_split_full('synthetic', workdir / 'data', 'cube', 'test')[-1]
  io.write_png(tmp_path / 'a.png', sample['rgb'])
  io.write_xyz_tiff(tmp_path / 'a.tiff', sample['xyz'])
  result = predict.main(['--workdir', str(workdir), '--rgb', str(tmp_path / 'a.png'), '--xyz',
                         str(tmp_path / 'a.tiff'), '--out', str(tmp_path / 'map.png'), '--size', 'original',
                         '--overlay', str(tmp_path / 'overlay.png')])
  with np.load(workdir / 'cube' / 'g2sf' / 'evaluate' / 'evaluation.npz') as z:
    names = list(z['names'])
    expected = {row: float(z[f'score_{row}'][names.index(sample['name'])]) for row in ('IMG', 'PCD', 'FUS')}
  for row, score in expected.items():
    assert result['image_scores'][row] == pytest.approx(score, rel=1e-4)
  written = io.read_mask_png(tmp_path / 'map.png')
  assert written.shape == sample['rgb'].shape[:2] and written.max() > 0
  assert io.read_rgb_png(tmp_path / 'overlay.png').shape == sample['rgb'].shape


def test_predict_rejects_bad_scans(finished, tmp_path):
  config, _ = finished
  rgb = np.zeros((200, 200, 3), np.uint8)
  io.write_png(tmp_path / 'a.png', rgb)
  io.write_xyz_tiff(tmp_path / 'empty.tiff', np.zeros((200, 200, 3), np.float32))
  io.write_xyz_tiff(tmp_path / 'small.tiff', np.ones((100, 100, 3), np.float32))
  base = ['--workdir', config.workdir, '--rgb', str(tmp_path / 'a.png'), '--out', str(tmp_path / 'm.png')]
  with pytest.raises(SystemExit, match='empty'):
    predict.main(base + ['--xyz', str(tmp_path / 'empty.tiff')])
  with pytest.raises(SystemExit, match='differ in size'):
    predict.main(base + ['--xyz', str(tmp_path / 'small.tiff')])
  with pytest.raises(SystemExit, match='needs an organised point cloud'):
    predict.main(base)
  with pytest.raises(SystemExit, match='missing.tiff'):
    predict.main(base + ['--xyz', str(tmp_path / 'missing.tiff')])
  assert not (tmp_path / 'm.png').exists()


@pytest.mark.parametrize('method, modalities, rows', [('btf', 'rgb+xyz', ['BTF']), ('g2sf', 'rgb', ['IMG']),
                                                      ('g2sf', 'xyz', ['PCD'])])
def test_baseline_and_single_modality_runs(tmp_path, method, modalities, rows):
  """BTF on both modalities; RGB-only and 3D-only runs on data that has only those files."""
  config = tiny_config(tmp_path)
  config.synthetic.n_train = 4
  config.method = method
  config.modalities = config.synthetic.modalities = modalities
  table = pipeline.run(config)
  assert table['rows'] == rows
  assert all(0 <= v <= 1 for v in table['classes']['cube'][rows[0]].values())
  assert not (tmp_path / 'cube' / 'g2sf' / 'fusion_data').exists()  # no fusion without both modalities / for BTF


def test_modalities_missing_from_the_data_are_named(tmp_path):
  config = tiny_config(tmp_path)
  config.synthetic.n_train = 4
  config.synthetic.modalities = 'rgb'
  config.stages = 'prepare'
  with pytest.raises(ValueError, match="no xyz files.*--config.modalities=rgb"):
    pipeline.run(config)


def test_methods_share_a_workdir(finished, tmp_path):
  """BTF after G²SF in one work directory reuses the prepared data and features and keeps G²SF's outputs."""
  config, table = finished
  shared = tmp_path / 'shared'
  shutil.copytree(config.workdir, shared)
  before = _markers(shared)
  btf = tiny_config(shared)
  btf.method = 'btf'
  btf_table = pipeline.run(btf)
  assert btf_table['rows'] == ['BTF']
  assert _markers(shared) == before  # prepare and extract reused, G²SF untouched
  btf_markers = _markers(shared, ('btf/banks', 'btf/evaluate'))
  assert pipeline.run(tiny_config(shared))['classes'] == table['classes']
  assert pipeline.run(btf)['classes'] == btf_table['classes']
  assert _markers(shared) == before and _markers(shared, ('btf/banks', 'btf/evaluate')) == btf_markers
  assert (shared / 'btf' / 'report' / 'results.json').is_file() and (shared / 'g2sf' / 'report').is_dir()
  assert Workdir(shared).methods() == ['btf', 'g2sf']
