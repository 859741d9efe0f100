"""The whole runner on a tiny synthetic set: every stage, caching and resumption, the report, and predict.

The session's tiny runs (tests/conftest.py: `finished`, about a minute here, and `every_method`), made by one xdist
worker for their group, feed most tests.
"""
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import tifffile

from experiments import predict, report, runner, stages
from tests import tiny_run
from tests.tiny_run import tiny_config
from g2sf_jax import decisions, detector, io, methods, ply
from g2sf_jax.data import transforms
from g2sf_jax.errors import ConfigError, CorruptOutputError, NonFiniteError, UserError
from g2sf_jax.workdir import Workdir

ONE_RUN = pytest.mark.xdist_group(tiny_run.GROUP)
STAGE_FILES = ('prepare', 'extract', 'patchcore/banks', 'g2sf/fusion_data', 'g2sf/train', 'g2sf/calibrate',
               'g2sf/evaluate')


def _home(workdir, stage_id, config=None):
  return Workdir(workdir).home(stages.stage_folder(config or tiny_config(workdir), stage_id), 'cube')


def _output(workdir, stage_id, config=None) -> Path:
  """The published version folder of a stage of class cube."""
  return _home(workdir, stage_id, config).current().path


def _markers(workdir, stage_ids=STAGE_FILES, config=None):
  """When each stage's outputs were last published (its `current.json`)."""
  return {s: os.stat(_home(workdir, s, config).path / 'current.json').st_mtime_ns for s in stage_ids}


@ONE_RUN
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
  assert detector.Run(workdir).config.dataset == 'synthetic'


@ONE_RUN
def test_rerun_skips_finished_stages(finished):
  config, table = finished
  before = _markers(Path(config.workdir))
  again = runner.run(config)
  assert _markers(Path(config.workdir)) == before
  assert again['classes'] == table['classes']


@ONE_RUN
def test_changed_scoring_field_reruns_only_evaluation(finished):
  config, _ = finished
  workdir = Path(config.workdir)
  before = _markers(workdir)
  changed = tiny_config(workdir)
  changed.g2sf.scoring_mode = 'max'
  changed.stages = 'calibrate,evaluate'
  runner.run(changed)
  after = _markers(workdir)
  assert after['g2sf/evaluate'] != before['g2sf/evaluate'] and after['g2sf/calibrate'] != before['g2sf/calibrate']
  assert {s: after[s] for s in STAGE_FILES[:-2]} == {s: before[s] for s in STAGE_FILES[:-2]}
  runner.run(tiny_config(workdir))  # back to the module's configuration for the other tests


def test_stage_keys_follow_backbone_parameters_and_code_versions(tmp_path, monkeypatch):
  keys = {s: runner.Runner(tiny_config(tmp_path)).key(s, 'cube') for s in STAGE_FILES}
  changed = tiny_config(tmp_path)
  changed.fpfh = ml_collections.ConfigDict({'feature_max_nn': 90})  # only the point backbone's meta differs
  other = runner.Runner(changed)
  assert other.key('prepare', 'cube') == keys['prepare']
  assert all(other.key(s, 'cube') != keys[s] for s in STAGE_FILES[1:])
  monkeypatch.setattr(stages, 'EXTRACT', dataclasses.replace(stages.EXTRACT, version=stages.EXTRACT.version + 1))
  bumped = runner.Runner(tiny_config(tmp_path))
  assert bumped.key('prepare', 'cube') == keys['prepare']
  assert all(bumped.key(s, 'cube') != keys[s] for s in STAGE_FILES[1:])


def test_stage_keys_hash_only_the_fields_a_stage_declares(tmp_path):
  keys = {s: runner.Runner(tiny_config(tmp_path)).key(s, 'cube') for s in STAGE_FILES}

  def changed_stages(config):
    run = runner.Runner(config)
    return {s for s in STAGE_FILES if run.key(s, 'cube') != keys[s]}

  scoring = tiny_config(tmp_path)
  scoring.g2sf.scoring_mode = 'max'  # read by G²SF's scorer only
  assert changed_stages(scoring) == {'g2sf/calibrate', 'g2sf/evaluate'}
  training = tiny_config(tmp_path)
  training.g2sf.epochs = 3
  assert changed_stages(training) == {'g2sf/train', 'g2sf/calibrate', 'g2sf/evaluate'}
  coreset = tiny_config(tmp_path)
  coreset.memory_bank.coreset_fraction = 0.2
  assert changed_stages(coreset) == set(STAGE_FILES[2:])
  more = tiny_config(tmp_path)  # another class in the run: other anomaly sources for cube's fusion data
  more.synthetic.classes = 'cube,torus'
  assert changed_stages(more) == {'g2sf/fusion_data', 'g2sf/train', 'g2sf/calibrate', 'g2sf/evaluate'}
  pinned = tiny_config(tmp_path)
  pinned.synthetic.classes = 'cube,torus'
  pinned.synthesis.source_classes = 'cube'  # the pool of the cube-only run: its outputs are kept
  assert changed_stages(pinned) == set()
  pooled = tiny_config(tmp_path)
  pooled.synthesis.source_classes = 'cube,torus'  # the two-class run's pool, in a cube-only run
  assert runner.Runner(pooled).key('g2sf/fusion_data', 'cube') == runner.Runner(more).key('g2sf/fusion_data',
                                                                                               'cube')


def test_m3dm_uff_classes_keeps_a_full_runs_uff(tmp_path):
  """The UFF trains on every class of its pool: a subset run redoes it unless the pool names the full run's list."""
  from experiments.configs import m3dm_synthetic

  def uff_key(classes, uff_classes=''):
    c = m3dm_synthetic.get_config()
    c.workdir, c.synthetic.classes, c.m3dm.uff_classes = str(tmp_path), classes, uff_classes
    return runner.Runner(c).key('m3dm/uff', '')
  full = uff_key('cube,cylinder,torus')
  assert uff_key('cube') != full and uff_key('cube', 'cube,cylinder,torus') == full


def test_missing_upstream_names_the_command(tmp_path):
  config = tiny_config(tmp_path)
  config.stages = 'extract'
  with pytest.raises(FileNotFoundError, match='--config.stages=prepare'):
    runner.run(config)


def check_raw_predict(workdir: Path, modalities: str, tmp_path: Path, cli_single: bool = False) -> None:
  """Every test sample, scored from its raw files as they lie in the dataset layout (CLI batch, CLI single, API
  on files and on arrays), gets exactly the evaluation's image scores, maps and decisions."""
  method = Workdir(workdir).methods()[0]
  with np.load(Workdir(workdir).home(f'{method}/evaluate', 'cube').current().path / 'evaluation.npz') as z:
    want = {k: z[k] for k in z.files}
  names = list(want['names'])
  rows = [k[len('score_'):] for k in want if k.startswith('score_')]
  folders = sorted((workdir / 'raw' / 'cube' / 'test').iterdir())
  result = predict.main(['--workdir', str(workdir), '--scans', *map(str, folders), '--out', str(tmp_path / 'batch')])
  assert len(result['scans']) == len(names) and all(r['status'] == 'ok' for r in result['scans'])
  main = result['row']
  for rec in result['scans']:
    i = names.index('test/' + rec['scan'])
    assert rec['image_scores'] == {row: float(want[f'score_{row}'][i]) for row in rows}, rec['scan']
    assert rec['label'] == ('defect' if want[f'decision_{main}'][i] else 'good'), rec['scan']  # as evaluated
    gt = io.read_mask_png(workdir / 'raw' / 'cube' / 'test' / _gt_path(rec['scan']))
    for kind in ('map', 'mask'):  # at the scan's own resolution
      assert io.read_mask_png(tmp_path / 'batch' / rec[kind]).shape == gt.shape, (rec['scan'], kind)
    written = io.read_mask_png(tmp_path / 'batch' / rec['mask']) != 0
    assert int(written.sum()) == rec['defect_pixels'] == sum(r['area_px'] for r in rec['regions'])
  assert (tmp_path / 'batch' / 'scores.csv').read_text().count('\n') == len(names) + 1
  det = detector.Detector.load(workdir, 'cube')
  kind = det.kind
  entries = [e for folder in folders for e in kind.scan_folder(folder)]
  for entry, got in zip(entries, det.score_entries(entries)):  # the API, batched: maps too
    i = names.index('test/' + entry.name)
    for row in rows:
      assert got.image[row] == float(want[f'score_{row}'][i])
      np.testing.assert_array_equal(got.maps[row], want[f'map_{row}'][i])
  files = {m: folders[0] / m / f'000.{"png" if m == "rgb" else "tiff"}' for m in modalities.split('+')}
  i = names.index(f'test/{folders[0].name}/000')
  one = det.score_files(**files)  # the API, one scan by its files
  assert one.image == {row: float(want[f'score_{row}'][i]) for row in rows}
  assert one.label == ('defect' if want[f'decision_{det.main_row}'][i] else 'good')
  arrays = {'rgb': io.read_rgb_png, 'xyz': io.read_xyz_tiff}
  assert det.score(**{m: arrays[m](p) for m, p in files.items()}).image == one.image  # on arrays read from them
  if cli_single:
    single = predict.main(['--workdir', str(workdir)] + [a for m, p in files.items() for a in (f'--{m}', str(p))] +
                          ['--out', str(tmp_path / 'one.png'), '--raw', str(tmp_path / 'one.tiff'),
                           '--overlay', str(tmp_path / 'overlay.png'), '--mask', str(tmp_path / 'mask.png')]
                          + (['--ply', str(tmp_path / 'one.ply')] if 'xyz' in files else []))
    assert single['image_scores'] == one.image and single['label'] == one.label
    assert single['score'] == one.decision.score and single['regions'] == [r.to_json() for r in one.decision.regions]
    gt_shape = io.read_mask_png(folders[0] / 'gt' / '000.png').shape
    np.testing.assert_array_equal(io.read_mask_png(tmp_path / 'one.png'),
                                  np.clip(np.round(one.decision.map * 255), 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(io.read_mask_png(tmp_path / 'mask.png') != 0, one.decision.mask)
    assert tifffile.imread(tmp_path / 'one.tiff').shape == gt_shape
    if 'rgb' in files:  # over the scan as it lies on disk, not the cleaned image (black where the plane was)
      want = report.overlay(io.read_rgb_png(files['rgb']), one.decision.map, np.zeros(gt_shape, bool), (0.0, 1.0),
                            predicted=one.decision.mask)
      np.testing.assert_array_equal(io.read_rgb_png(tmp_path / 'overlay.png'), want)
    if 'xyz' in files:  # the cleaned cloud, each point with its pixel's normalised score
      points, scores = ply.read(tmp_path / 'one.ply')
      cloud = decisions.scan_cloud(det.kind.load_entry(det.kind.scan_entry(**files), False))
      valid = transforms.valid_mask(cloud)
      np.testing.assert_array_equal(points, cloud[valid])
      np.testing.assert_array_equal(scores, one.decision.map[valid])


def _gt_path(scan: str) -> str:
  """'crack/003' → 'crack/gt/003.png'."""
  defect, stem = scan.split('/')
  return f'{defect}/gt/{stem}.png'


@ONE_RUN
def test_predict_from_raw_files_gives_the_evaluation_scores(finished, tmp_path):
  config, _ = finished
  check_raw_predict(Path(config.workdir), 'rgb+xyz', tmp_path, cli_single=True)


@ONE_RUN
def test_predict_rejects_bad_scans(finished, tmp_path):
  config, _ = finished
  rgb = np.zeros((200, 200, 3), np.uint8)
  io.write_png(tmp_path / 'a.png', rgb)
  io.write_xyz_tiff(tmp_path / 'empty.tiff', np.zeros((200, 200, 3), np.float32))
  io.write_xyz_tiff(tmp_path / 'small.tiff', np.ones((100, 100, 3), np.float32))
  io.write_png(tmp_path / 'tiny.png', np.zeros((1, 1, 3), np.uint8))
  io.write_xyz_tiff(tmp_path / 'tiny.tiff', np.ones((1, 1, 3), np.float32))
  base = ['--workdir', config.workdir, '--rgb', str(tmp_path / 'a.png'), '--out', str(tmp_path / 'm.png')]
  with pytest.raises(SystemExit, match='cannot be scored: 0 valid points'):
    predict.main(base + ['--xyz', str(tmp_path / 'empty.tiff')])
  with pytest.raises(SystemExit, match='differs from its point cloud'):
    predict.main(base + ['--xyz', str(tmp_path / 'small.tiff')])
  with pytest.raises(SystemExit, match=r'needs an organised point cloud \(xyz\)'):
    predict.main(base)
  with pytest.raises(SystemExit, match='missing.tiff'):
    predict.main(base + ['--xyz', str(tmp_path / 'missing.tiff')])
  with pytest.raises(SystemExit, match='1×1 pixels, too small'):
    predict.main(['--workdir', config.workdir, '--rgb', str(tmp_path / 'tiny.png'), '--xyz',
                  str(tmp_path / 'tiny.tiff'), '--out', str(tmp_path / 'm.png')])
  assert not (tmp_path / 'm.png').exists()


@ONE_RUN
def test_unscorable_scans_get_a_status_not_a_score(finished, tmp_path):
  """An empty cloud and a cloud whose points all coincide (FPFH spacing 0) are reported, never scored."""
  config, _ = finished
  good = Path(config.workdir) / 'raw' / 'cube' / 'test' / 'good'
  scans = tmp_path / 'scans'
  shutil.copytree(good, scans, ignore=shutil.ignore_patterns('gt'))
  io.write_xyz_tiff(scans / 'xyz' / '000.tiff', np.zeros((200, 200, 3), np.float32))
  same = np.zeros((200, 200, 3), np.float32)
  same[50:150, 50:150] = (0.01, 0.02, 0.5)  # 10,000 valid points at one position
  io.write_xyz_tiff(scans / 'xyz' / '001.tiff', same)
  out = predict.main(['--workdir', config.workdir, '--scans', str(scans), '--out', str(tmp_path / 'out')])
  status = {r['scan']: (r['status'], r['reason'], r['image_scores']) for r in out['scans']}
  assert status['scans/000'][:1] == ('unscorable',) and 'valid points' in status['scans/000'][1]
  assert status['scans/001'][0] == 'unscorable' and 'all zero' in status['scans/001'][1]
  assert status['scans/000'][2] == {} and status['scans/001'][2] == {}
  table = (tmp_path / 'out' / 'scores.csv').read_text()
  assert 'scans/000,unscorable' in table and 'scans/001,unscorable' in table


@ONE_RUN
def test_predict_never_writes_into_the_scans_or_over_foreign_files(finished, tmp_path):
  """Outputs are checked before the model loads: none may be a scan's file or lie in a --scans folder, an existing
  file or folder is replaced only if predict wrote it, and a results folder is replaced whole."""
  config, _ = finished
  scans = tmp_path / 'scans'
  shutil.copytree(Path(config.workdir) / 'raw' / 'cube' / 'test' / 'good', scans, ignore=shutil.ignore_patterns('gt'))
  raw = {p: p.read_bytes() for p in scans.rglob('*') if p.is_file()}
  one = ['--workdir', config.workdir, '--rgb', str(scans / 'rgb' / '000.png'), '--xyz', str(scans / 'xyz' / '000.tiff')]
  many = ['--workdir', config.workdir, '--scans', str(scans)]
  for args in (one + ['--out', str(scans / 'rgb' / '000.png')],
               one + ['--out', str(tmp_path / 'm.png'), '--overlay', str(scans / 'rgb' / '000.png')],
               many + ['--out', str(scans)], many + ['--out', str(scans / 'results')]):
    with pytest.raises(SystemExit, match='never writes into the input data'):
      predict.main(args)
  with pytest.raises(SystemExit, match='only for one scan'):
    predict.main(many + ['--out', str(tmp_path / 'r'), '--raw', str(tmp_path / 'x.tiff')])
  with pytest.raises(SystemExit, match=r'to a \.png file path'):
    predict.main(one + ['--out', f'{tmp_path / "resdir"}/'])
  with pytest.raises(SystemExit, match='each output needs its own path'):
    predict.main(one + ['--out', str(tmp_path / 'm.png'), '--overlay', str(tmp_path / 'm.png')])
  io.write_png(tmp_path / 'notes.png', np.full((2, 2), 7, np.uint8))
  (tmp_path / 'mine').mkdir()
  (tmp_path / 'mine' / 'scores.json').write_text('{"my": "notes"}')
  with pytest.raises(SystemExit, match='notes.png: exists and was not written by predict'):
    predict.main(one + ['--out', str(tmp_path / 'notes.png')])
  with pytest.raises(SystemExit, match='mine: exists and was not written by predict'):
    predict.main(many + ['--out', str(tmp_path / 'mine')])
  assert io.read_mask_png(tmp_path / 'notes.png').max() == 7
  assert (tmp_path / 'mine' / 'scores.json').read_text() == '{"my": "notes"}'
  first = predict.main(one + ['--out', str(tmp_path / 'map.png')])
  assert predict.main(one + ['--out', str(tmp_path / 'map.png')])['image_scores'] == first['image_scores']
  predict.main(many + ['--out', str(tmp_path / 'res')])
  io.write_png(tmp_path / 'res' / 'maps' / 'old_scan.png', np.zeros((2, 2), np.uint8))
  again = predict.main(many + ['--out', str(tmp_path / 'res')])
  assert sorted(p.name for p in (tmp_path / 'res' / 'maps').iterdir()) == sorted(
      Path(r['map']).name for r in again['scans'])
  assert raw == {p: p.read_bytes() for p in scans.rglob('*') if p.is_file()}
  shutil.copytree(scans, tmp_path / 'res' / 'scans')  # replacing the results folder would delete these scans
  with pytest.raises(SystemExit, match='holds scans being scored'):
    predict.main(['--workdir', config.workdir, '--scans', str(tmp_path / 'res' / 'scans'), '--out',
                  str(tmp_path / 'res')])
  (tmp_path / 'link').symlink_to(tmp_path / 'res')
  with pytest.raises(SystemExit, match='a symbolic link'):
    predict.main(many + ['--out', str(tmp_path / 'link')])
  shutil.copytree(scans, tmp_path / 'line_b' / 'scans')
  with pytest.raises(SystemExit, match="two scans are both named 'scans/000'"):
    predict.main(['--workdir', config.workdir, '--scans', str(scans), str(tmp_path / 'line_b' / 'scans'),
                  '--out', str(tmp_path / 'twins')])


@ONE_RUN
def test_rgb_only_run_on_data_with_clouds_preprocesses_scans_as_it_trained(finished, tmp_path):
  """An RGB-only run on a class with point clouds trained on images cleaned with the cloud's plane and clusters
  (algorithms.md §1.2): predict cleans a scan's image the same way, so it needs the scan's xyz file too."""
  config, _ = finished
  workdir = tmp_path / 'w'
  shutil.copytree(config.workdir, workdir)
  rgb_only = tiny_config(workdir)
  rgb_only.modalities = 'rgb'
  assert runner.run(rgb_only)['rows'] == ['IMG']
  check_raw_predict(workdir, 'rgb+xyz', tmp_path / 'predict')
  scan = workdir / 'raw' / 'cube' / 'test' / 'good'
  with pytest.raises(SystemExit, match=r"needs an organised point cloud \(xyz\) \(it scores 'rgb', but its class "
                                       r"was prepared from 'rgb\+xyz' files"):
    predict.main(['--workdir', str(workdir), '--rgb', str(scan / 'rgb' / '000.png'), '--out', str(tmp_path / 'm.png')])


@pytest.mark.parametrize('method, modalities, rows', [('btf', 'rgb+xyz', ['BTF']), ('g2sf', 'rgb', ['IMG']),
                                                      ('g2sf', 'xyz', ['PCD'])])
def test_baseline_and_single_modality_runs(tmp_path, method, modalities, rows):
  """BTF on both modalities; RGB-only and 3D-only runs on data that has only those files."""
  workdir = tmp_path / 'w'
  config = tiny_config(workdir)
  config.synthetic.n_train = 4
  config.method = method
  config.modalities = config.synthetic.modalities = modalities
  table = runner.run(config)
  assert table['rows'] == rows
  assert all(0 <= v <= 1 for v in table['classes']['cube'][rows[0]].values())
  assert not (workdir / 'cube' / 'g2sf' / 'fusion_data').exists()  # no fusion without both modalities / for BTF
  if method == 'g2sf':  # RGB-only and 3D-only (rgb+xyz: test_predict_from_raw_files_gives_the_evaluation_scores)
    check_raw_predict(workdir, modalities, tmp_path / 'predict')


def test_the_report_keeps_classes_evaluated_earlier_with_the_same_settings(tmp_path):
  """One job per class: each job's report covers every class evaluated so far under its settings, and only those."""
  config = tiny_config(tmp_path)
  config.method, config.synthetic.n_train, config.synthetic.classes = 'btf', 4, 'cube,cylinder'
  config.classes = 'cube'
  cube = runner.run(config)['classes']['cube']
  config.classes = 'cylinder'
  both = runner.run(config)
  assert list(both['classes']) == ['cube', 'cylinder'] and both['classes']['cube'] == cube
  reported = lambda: sorted(json.loads((tmp_path / 'btf' / 'report' / 'results.json').read_text())['classes'])
  assert reported() == ['cube', 'cylinder']
  assert 'report: also cube, evaluated earlier with these settings' in (tmp_path / 'run.log').read_text()
  config.scoring.blur = 'float'  # cube's result was made with the other blur: not this run's
  assert list(runner.run(config)['classes']) == ['cylinder'] and reported() == ['cylinder']


def test_a_changed_synthetic_field_regenerates_the_runners_own_data(tmp_path):
  """The synthetic set in `<workdir>/raw` is the runner's: a new seed or size regenerates it instead of failing;
  the folder a killed TFDS build left behind is cleared."""
  config = tiny_config(tmp_path)
  config.synthetic.n_train, config.synthetic.n_test, config.stages = 1, 2, 'prepare'
  key = runner.Runner(config).key('prepare', 'cube')
  interrupted = Workdir(tmp_path).home('prepare', 'cube').path / key / 'synthetic' / 'cube' / 'incomplete.X1Y2Z3_1.0.0'
  interrupted.mkdir(parents=True)  # what TFDS leaves when a build is killed
  runner.run(config)
  assert not interrupted.exists()
  config.seed = 1
  runner.run(config)
  assert json.loads((tmp_path / 'raw' / 'cube' / 'synthetic.json').read_text())['seed'] == 1


def test_modalities_missing_from_the_data_are_named(tmp_path):
  """Synthetic data without clouds for an RGB+3D run: refused before anything is generated."""
  config = tiny_config(tmp_path / 'w')
  config.synthetic.modalities = 'rgb'
  with pytest.raises(ConfigError, match="config.modalities = 'rgb\\+xyz' needs files that config.synthetic"):
    runner.run(config)
  assert not (tmp_path / 'w').exists()


@ONE_RUN
def test_methods_share_a_workdir(finished, every_method):
  """BTF, M3DM and CFM after G²SF in one work directory reuse the prepared data and features and keep G²SF's
  outputs; a re-run of either changes nothing."""
  config, table = finished
  shared, tables = every_method
  trained = STAGE_FILES[:-2]  # (another test re-runs the calibration and evaluation of `finished`)
  assert _markers(shared, trained) == _markers(Path(config.workdir), trained)  # copied with their times, untouched
  before = _markers(shared)
  btf = tiny_run.method_config(shared, 'btf')
  btf_markers = _markers(shared, ('btf/banks', 'btf/evaluate'), btf)
  assert runner.run(tiny_config(shared))['classes'] == table['classes']
  assert runner.run(btf)['classes'] == tables['btf']['classes']
  assert _markers(shared) == before
  assert _markers(shared, ('btf/banks', 'btf/evaluate'), btf) == btf_markers
  assert (shared / 'btf' / 'report' / 'results.json').is_file() and (shared / 'g2sf' / 'report').is_dir()
  assert Workdir(shared).methods() == ['btf', 'cfm', 'g2sf', 'm3dm']


@ONE_RUN
def test_stage_durations_in_the_log(finished):
  config, _ = finished
  log = (Path(config.workdir) / 'run.log').read_text()
  assert 'g2sf/train cube: done in' in log and 'extract cube: done in' in log
  assert 'rows IMG, PCD, FUS · stages prepare, extract, patchcore/banks' in (
      Path(config.workdir) / 'g2sf' / 'report' / 'results.md').read_text()


@pytest.mark.parametrize('field, value, message', [
    ('g2sf.scoring_mode', 'maxx', r"g2sf.scoring_mode = 'maxx' is not one of .*did you mean 'max'"),
    ('memory_bank.coreset_fraction', 1.5, r'coreset_fraction = 1.5: expected a finite number in \(0, 1\]'),
    ('g2sf.lr', float('inf'), r'g2sf.lr = inf: expected a finite number in \(0'),
    ('g2sf.w_margin', float('nan'), r'g2sf.w_margin = nan: expected a finite number'),
    ('fpfh.scale', float('inf'), r'config.fpfh: search parameters must be finite and positive'),
    ('max_pixels', 10, r'max_pixels = 10: expected an integer in \[4096'),
    ('metrics.aupro_thresholds', 1, r'aupro_thresholds = 1: expected an integer in \[2'),
    ('scoring.blur', 'gauss', r"scoring.blur = 'gauss' is not one of"),
    ('point_backbone', 'pointnet', r"point_backbone = 'pointnet' is not one of"),
    ('stages', 'prepare,fusion', r"config.stages: unknown \['fusion'\]"),
    ('g2sf.epochs', 0, r'g2sf.epochs = 0: expected an integer in \[1'),
    ('synthetic.fov', 0.0, r'synthetic.fov = 0.0: expected a finite number in \[0.01'),
    ('dataset', 'mvtec3d', 'config.raw_dir is empty'),
    ('distributed.coordinator', 'node0', r"distributed.coordinator = 'node0': expected host:port"),
    ('distributed.process_id', 0, r'distributed.coordinator = \'\': expected host:port'),
    ('metrics.aupro_thresholds', 'full', r"aupro_thresholds = 'full': expected an integer .*, or 'exact'"),
    ('synthetic.n_test', 1, r'synthetic.n_test = 1: expected an integer in \[2'),
    ('synthetic.modalities', 'rgbx', r"config.synthetic.modalities: modalities must be 'rgb\+xyz'"),
    ('classes', 'bagle', r"config.classes: unknown synthetic class 'bagle'"),
    ('synthesis.source_classes', 'cube,cone', r"config.synthesis.source_classes: unknown synthetic class 'cone'"),
    ('synthetic.classes', 'cube,tyre', r"config.synthetic.classes: unknown synthetic class 'tyre'"),
])
def test_a_bad_config_fails_before_any_stage(tmp_path, field, value, message):
  config = tiny_config(tmp_path / 'w')
  section, _, name = field.rpartition('.')
  (config[section] if section else config)[name] = value
  with pytest.raises(ConfigError, match=message):
    runner.run(config)
  assert not (tmp_path / 'w').exists()  # nothing was written


def test_a_second_run_on_a_busy_workdir_is_refused(tmp_path):
  from g2sf_jax.errors import WorkdirBusyError
  wd = Workdir(tmp_path)
  with wd.lock('the first run'):
    with pytest.raises(WorkdirBusyError, match=rf'another run is using this work directory \(pid {os.getpid()} '
                                              r'on .* the first run\)'):
      runner.run(tiny_config(tmp_path))
  assert not (tmp_path / 'cube').exists()
  with wd.lock('free again'):  # released when the holder's block ends
    pass


@ONE_RUN
def test_a_failed_run_keeps_the_record_of_the_finished_one(finished, tmp_path):
  config, _ = finished
  shared = tmp_path / 'copy'
  shutil.copytree(config.workdir, shared)
  before = (shared / 'g2sf' / 'run.json').read_text()
  changed = tiny_config(shared)
  changed.g2sf.epochs = 3
  changed.stages = 'evaluate'  # the retrained fuser does not exist: this run fails
  with pytest.raises(FileNotFoundError, match="'g2sf/train' stage has no up-to-date, intact output"):
    runner.run(changed)
  assert (shared / 'g2sf' / 'run.json').read_text() == before
  assert detector.Run(shared).classes == ('cube',)


@ONE_RUN
def test_changed_raw_files_are_prepared_again_and_problems_are_reported(finished, tmp_path):
  """A user's raw folder: prepare is keyed on its files; a test cloud made empty is listed in the report."""
  config, _ = finished
  raw = tmp_path / 'raw'
  shutil.copytree(Path(config.workdir) / 'raw', raw)
  c = tiny_config(tmp_path / 'w')
  c.raw_dir = str(raw)
  c.method = 'patchcore'
  runner.run(c)
  before = _markers(tmp_path / 'w', ('prepare', 'extract'), c)
  runner.run(c)
  assert _markers(tmp_path / 'w', ('prepare', 'extract'), c) == before
  io.write_xyz_tiff(raw / 'cube' / 'test' / 'crack' / 'xyz' / '000.tiff', np.zeros((200, 200, 3), np.float32))
  table = runner.run(c)
  after = _markers(tmp_path / 'w', ('prepare', 'extract'), c)
  assert all(after[s] != before[s] for s in after)
  assert table['problems'] == {'cube': ['test/crack/000: empty_cloud: the point cloud has no valid point']}
  assert 'test/crack/000: empty_cloud' in (tmp_path / 'w' / 'patchcore' / 'report' / 'report.html').read_text()


def _cli(*args: str) -> subprocess.CompletedProcess:
  root = Path(__file__).resolve().parents[2]
  return subprocess.run([sys.executable, '-m', 'experiments.run', *args], cwd=root, capture_output=True, text=True,
                        timeout=300)


def test_cli_user_errors_are_one_line_without_traceback(tmp_path):
  bad = _cli('--config', 'synthetic', '--config.g2sf.scoring_mod=max', f'--config.workdir={tmp_path}')
  assert bad.returncode != 0 and 'Traceback' not in bad.stderr
  assert "no such config field; did you mean 'g2sf.scoring_mode'" in bad.stderr
  bad = _cli('--config', 'synthetic', '--config.g2sf.consistency=perrow', f'--config.workdir={tmp_path / "w"}')
  assert bad.returncode == 1 and 'Traceback' not in bad.stderr
  assert bad.stderr.strip().splitlines()[-1].startswith("error: config.g2sf.consistency = 'perrow'")
  assert not (tmp_path / 'w').exists()


@ONE_RUN
def test_m3dm_and_cfm_run_on_the_shared_features(every_method, tmp_path):
  """Both baselines end to end on the tiny set, in the G²SF work directory: rows and overlays."""
  shared, tables = every_method
  for method, rows in (('btf', ['BTF']), ('m3dm', ['IMG', 'PCD', 'M3DM']), ('cfm', ['CFM'])):
    table = tables[method]
    assert table['rows'] == rows
    assert all(0 <= v <= 1 for row in rows for v in table['classes']['cube'][row].values())
    html = (shared / method / 'report' / 'report.html').read_text()
    assert 'cube/roc.png' in html and 'overlays/' in html
  with np.load(_output(shared, 'cfm/evaluate', tiny_run.method_config(shared, 'cfm')) / 'evaluation.npz') as z:
    assert 'pro_map_CFM' in z.files and not np.array_equal(z['pro_map_CFM'], z['map_CFM'])
  # The generic detector scores a raw scan alone as the evaluation did in its batch, for each method (CFM's scorer
  # asks for 224² point features, which come from the cloud).
  scan = shared / 'raw' / 'cube' / 'test' / 'crack'
  for method in ('cfm', 'm3dm'):
    got = predict.main(['--workdir', str(shared), '--method', method, '--rgb', str(scan / 'rgb' / '000.png'),
                        '--xyz', str(scan / 'xyz' / '000.tiff'), '--out', str(tmp_path / f'{method}.png')])
    with np.load(_output(shared, f'{method}/evaluate', tiny_run.method_config(shared, method)) / 'evaluation.npz') as z:
      i = list(z['names']).index('test/crack/000')
      assert got['image_scores'] == {row: float(z[f'score_{row}'][i]) for row in got['image_scores']}, method


def test_single_modality_baselines(tmp_path):
  config = tiny_config(tmp_path)
  config.method = 'cfm'
  config.modalities = 'rgb'
  with pytest.raises(ConfigError, match="'cfm' maps each modality onto the other"):
    runner.run(config)
  m3dm = tiny_config(tmp_path)
  m3dm.method = 'm3dm'
  m3dm.modalities = 'xyz'
  assert stages.stage_graph(methods.get('m3dm'), m3dm)[2].id == 'patchcore/banks'
  assert methods.get('m3dm').rows(m3dm) == ('PCD',)


_CLI_FIELDS = ('workdir', 'checkpoints.efficientnet_lite0', 'synthetic.classes', 'synthetic.size', 'synthetic.n_train',
               'synthetic.n_test', 'synthesis.num_anomalies', 'memory_bank.coreset_fraction', 'g2sf.epochs',
               'g2sf.batch_size', 'batch_size')


def _cli_flags(config) -> list[str]:
  """The fields `tiny_config` and the tests set, as command-line overrides of the synthetic config."""
  def value(field):
    v = config
    for part in field.split('.'):
      v = v[part]
    return v
  return [f'--config.{f}={value(f)}' for f in _CLI_FIELDS]


def _processes(flags: list[str], n: int, tmp_path: Path, devices: int, *extra: str) -> list[subprocess.Popen]:
  """`n` cooperating `experiments.run` processes on this machine, each with `devices` forced CPU devices."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu',
             G2SF_HOME=str(tmp_path / 'home'))
  root = Path(__file__).resolve().parents[2]
  return [subprocess.Popen([sys.executable, '-m', 'experiments.run', '--config', 'synthetic', *flags,
                            f'--config.distributed.coordinator=127.0.0.1:{port}',
                            f'--config.distributed.num_processes={n}', f'--config.distributed.process_id={i}',
                            *extra], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
          for i in range(n)]


def test_two_processes_give_the_one_process_results(tmp_path):
  """The tiny run as 2 cooperating processes × 2 CPU devices (jax.distributed, gloo collectives): the features,
  banks, search and LSPN training are split over 4 devices of 2 hosts, and results.json is the 1-process run's.
  (Fewer samples, smaller coresets and one epoch: every greedy and LSPN step is a collective, slow over gloo on one
  machine.)"""
  one = tiny_config(tmp_path / 'one')
  one.synthetic.n_train = one.synthetic.n_test = one.synthesis.num_anomalies = 4
  one.g2sf.batch_size = 24  # below min(0.7·754 // 20) = 26, a multiple of 4: the LSPN steps are split over the hosts
  one.memory_bank.coreset_fraction = 0.03
  one.g2sf.epochs = 1
  table = runner.run(one)
  two = ml_collections.ConfigDict(one.to_dict())
  two.workdir = str(tmp_path / 'two')
  procs = _processes(_cli_flags(two), 2, tmp_path, 2)
  outs = [p.communicate(timeout=900) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], '\n'.join(
      f'process {i}: {err[-2500:]}' for i, (_, err) in enumerate(outs))
  workdir = Path(two.workdir)
  assert '2 process(es), 4 device(s)' in (workdir / 'run.log').read_text()
  got = json.loads((workdir / 'g2sf' / 'report' / 'results.json').read_text())
  assert got['classes'] == table['classes']
  a, b = (np.load(_output(Path(w), 'g2sf/evaluate') / 'evaluation.npz') for w in (one.workdir, workdir))
  for name in a.files:  # features, banks and search are exact; the LSPN's gradients are summed in another order
    if name == 'score_FUS':
      np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6, err_msg=name)
    elif name.endswith('_FUS'):  # a pixel near a level of the reference's uint8 blur may land on the next one
      assert np.mean(~np.isclose(b[name], a[name], rtol=1e-5, atol=1e-6)) < 1e-4, name
    else:
      np.testing.assert_array_equal(b[name], a[name], err_msg=name)
  assert not list(workdir.glob('.process-*'))  # the second process's scratch outputs are gone
  assert Workdir(workdir).methods() == ['g2sf']


def test_the_other_processes_stop_when_one_dies(tmp_path):
  """Process 1 is killed once the run is under way; process 0 stops with an error naming the cause instead of
  waiting forever, and leaves no finished-run config behind."""
  config = tiny_config(tmp_path / 'w')
  procs = _processes(_cli_flags(config), 2, tmp_path, 1, '--config.distributed.heartbeat_timeout_s=5')
  marker = Workdir(config.workdir).home('prepare', 'cube').path / 'current.json'
  deadline = time.monotonic() + 300
  while not marker.is_file() and time.monotonic() < deadline and procs[0].poll() is None:
    time.sleep(0.5)
  assert marker.is_file(), procs[0].stderr.read()[-3000:] if procs[0].poll() is not None else 'prepare never ended'
  procs[1].kill()
  _, err = procs[0].communicate(timeout=120)
  procs[1].communicate()
  assert procs[0].returncode != 0
  causes = ('Connection closed by peer', 'Connection reset by peer', 'another task died', 'heartbeat')
  assert any(c in err for c in causes), err[-3000:]  # gloo sees the peer go, or JAX's heartbeat monitor does
  assert not (Path(config.workdir) / 'g2sf' / 'run.json').exists()


@ONE_RUN
def test_method_footprint_measures_a_finished_run(finished):
  from benchmarks import method_footprint
  config, _ = finished
  r = method_footprint.measure(config.workdir, 'cube', 'g2sf', repeats=1)
  assert r['rows'] == ['IMG', 'PCD', 'FUS'] and r['samples'] == config.synthetic.n_test
  from g2sf_jax import memory_bank
  from g2sf_jax.methods.patchcore import method as patchcore
  banks, _ = memory_bank.load(_output(Path(config.workdir), 'patchcore/banks') / patchcore.BANK_CHECKPOINT)
  coresets = sum(b.coreset.nbytes for b in banks.values())
  assert coresets <= r["state_bytes"] < 8 * coresets  # the coresets on the host and placed (padded), norms, LSPN
  assert r['per_sample_s'] > 0 and r['first_s'] > 0
  g2sf, cfm = method_footprint.full_size_state(244)
  assert '19,129 × 768 + 76,518 × 1152' in g2sf[1]  # bagel's coresets (BENCHMARKS.md, bank search row)


# ---------------------------------------------------------------------------------------------------------------
# A work directory that can be trusted: nothing runs from data, damage is found and rebuilt, failures keep the
# finished run, readers see one version.

def _flip_byte(path: Path) -> None:
  """One byte changed in place, the modification time put back: only the content tells."""
  st = os.stat(path)
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01
  path.write_bytes(bytes(data))
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _largest_file(folder: Path, pattern: str = '*') -> Path:
  return max((p for p in folder.rglob(pattern) if p.is_file() and p.name not in ('manifest.json', '.stat.json')),
             key=lambda p: p.stat().st_size)


def _scan_args(workdir: Path) -> list[str]:
  scan = workdir / 'raw' / 'cube' / 'test' / 'crack'
  return ['--workdir', str(workdir), '--rgb', str(scan / 'rgb' / '000.png'), '--xyz', str(scan / 'xyz' / '000.tiff')]


@ONE_RUN
def test_prepared_data_is_read_without_importing_what_a_file_names(finished, tmp_path, monkeypatch):
  """A `features.json` naming a planted module (what TFDS would import) imports nothing: the reader has its own
  schema; and the edited file makes the prepared data count as damaged, so the next run prepares it again."""
  config, table = finished
  shared = tmp_path / 'w'
  shutil.copytree(config.workdir, shared)
  (tmp_path / 'plugins').mkdir()
  sentinel = tmp_path / 'imported'
  (tmp_path / 'plugins' / 'evil_feat.py').write_text(f'open({str(sentinel)!r}, "w").write("ran")\n'
                                                     'FeaturesDict = dict\n')
  monkeypatch.syspath_prepend(str(tmp_path / 'plugins'))
  features_json = next(_output(shared, 'prepare').rglob('features.json'))
  features_json.write_text(features_json.read_text().replace(
      'tensorflow_datasets.core.features.features_dict.FeaturesDict', 'evil_feat.FeaturesDict'))
  assert 'evil_feat.FeaturesDict' in features_json.read_text()
  from g2sf_jax.data import prepared
  test = prepared.load_split('synthetic', _home(shared, 'prepare').current().path, 'cube', 'test')
  assert len(test) == config.synthetic.n_test and test[0]['rgb'].shape == (224, 224, 3)
  before = _markers(shared, ('prepare',))
  btf = tiny_config(shared)
  btf.method = 'btf'
  runner.run(btf)
  assert not sentinel.exists()
  assert _markers(shared, ('prepare',)) != before  # the edited prepared data was rebuilt, not used


@ONE_RUN
def test_damaged_outputs_are_named_and_rebuilt_by_the_next_run(finished, tmp_path):
  """A flipped byte in a feature chunk, the fusion data, the LSPN checkpoint, a coreset and the evaluation; an
  edited run record: readers name the file, and one ordinary run rebuilds exactly what is damaged."""
  config, table = finished
  shared = tmp_path / 'w'
  shutil.copytree(config.workdir, shared)
  banks = _output(shared, 'patchcore/banks')
  _flip_byte(_largest_file(banks))
  with pytest.raises(CorruptOutputError, match=rf'{banks}/.*content changed since it was written.*experiments.run'):
    detector.Detector.load(shared, 'cube', with_backbones=False)
  record = shared / 'g2sf' / 'run.json'
  record.write_text(record.read_text().replace('"scale": 0.055', '"scale": 0.55'))
  with pytest.raises(SystemExit, match='run.json: edited or damaged since experiments.run wrote it'):
    predict.main(_scan_args(shared) + ['--out', str(tmp_path / 'm.png')])
  for stage in ('extract', 'g2sf/fusion_data', 'g2sf/train', 'g2sf/evaluate'):
    _flip_byte(_largest_file(_output(shared, stage)))
  before = _markers(shared)
  again = runner.run(tiny_config(shared))
  after = _markers(shared)
  damaged = {'extract', 'patchcore/banks', 'g2sf/fusion_data', 'g2sf/train', 'g2sf/evaluate'}
  assert {s for s in STAGE_FILES if after[s] != before[s]} == damaged  # the others were intact
  assert again['classes'] == table['classes']
  assert 'extract cube: done in' in (shared / 'run.log').read_text()
  predict.main(_scan_args(shared) + ['--out', str(tmp_path / 'm.png')])  # the rewritten record reads again


@ONE_RUN
def test_deleted_outputs_are_rebuilt(finished, tmp_path):
  config, table = finished
  shared = tmp_path / 'w'
  shutil.copytree(config.workdir, shared)
  (_output(shared, 'g2sf/evaluate') / 'evaluation.npz').unlink()
  shutil.rmtree(_output(shared, 'g2sf/train') / 'best')
  before = _markers(shared)
  assert runner.run(tiny_config(shared))['classes'] == table['classes']
  after = _markers(shared)
  assert {s for s in STAGE_FILES if after[s] != before[s]} == {'g2sf/train', 'g2sf/evaluate'}


@ONE_RUN
def test_a_run_that_fails_in_training_leaves_the_finished_model_usable(finished, tmp_path, monkeypatch):
  """Training that diverges stops with one line naming the stage and class; what predict uses is untouched."""
  config, _ = finished
  shared = tmp_path / 'w'
  shutil.copytree(config.workdir, shared)
  want = predict.main(_scan_args(shared) + ['--out', str(tmp_path / 'before.png')])['image_scores']
  published = _markers(shared)
  diverging = tiny_config(shared)
  diverging.g2sf.lr = 1e30  # finite, so valid; the first epoch's loss is NaN
  with pytest.raises(NonFiniteError, match=r'g2sf/train cube: the LSPN training loss of epoch 0 .* came out NaN'):
    runner.run(diverging)
  assert predict.main(_scan_args(shared) + ['--out', str(tmp_path / 'after.png')])['image_scores'] == want
  assert runner.run(tiny_config(shared))  # the finished run's settings: every stage up to date
  assert _markers(shared) == published


@ONE_RUN
def test_predict_during_a_retrain_uses_one_version(finished, tmp_path, monkeypatch):
  """While a retrain has published its new LSPN but not yet its evaluation, predict answers with the finished
  run's model and map range (old, consistently); afterwards with the new ones (new, consistently)."""
  config, _ = finished
  shared = tmp_path / 'w'
  shutil.copytree(config.workdir, shared)
  old = predict.main(_scan_args(shared) + ['--out', str(tmp_path / 'old.png')])
  seen = []
  evaluate = stages._evaluate

  def evaluate_after_predict(ctx):
    seen.append(predict.main(_scan_args(shared) + ['--out', str(tmp_path / 'during.png')]))
    return evaluate(ctx)

  monkeypatch.setattr(stages, '_evaluate', evaluate_after_predict)
  retrain = tiny_config(shared)
  retrain.g2sf.dropout = 0.3  # another training from the first step
  runner.run(retrain)
  assert [s['image_scores'] for s in seen] == [old['image_scores']]
  assert (seen[0]['score'], seen[0]['regions']) == (old['score'], old['regions'])  # the old calibration too
  monkeypatch.setattr(stages, '_evaluate', evaluate)
  new = predict.main(_scan_args(shared) + ['--out', str(tmp_path / 'new.png')])
  assert new['image_scores']['FUS'] != old['image_scores']['FUS']
  with np.load(_output(shared, 'g2sf/evaluate', retrain) / 'evaluation.npz') as z:
    i = list(z['names']).index('test/crack/000')
    assert new['image_scores']['FUS'] == float(z['score_FUS'][i])
    assert new['label'] == ('defect' if z['decision_FUS'][i] else 'good')


@ONE_RUN
def test_predict_never_writes_into_a_work_directory_and_checks_its_outputs_first(finished, tmp_path, monkeypatch):
  config, _ = finished
  fusion = _output(Path(config.workdir), 'g2sf/fusion_data')
  scores = next(fusion.glob('*.npy'))
  before = scores.read_bytes()
  args = _scan_args(Path(config.workdir))
  with pytest.raises(SystemExit, match='inside the work directory'):
    predict.main(args + ['--out', str(tmp_path / 'm.png'), '--raw', str(fusion / 'score.tiff')])
  with pytest.raises(SystemExit, match='inside the work directory'):
    predict.main(args + ['--out', str(scores.with_suffix('.png'))])
  assert scores.read_bytes() == before
  loaded = []
  monkeypatch.setattr(detector.Detector, 'load', lambda *a, **k: loaded.append(1))
  with pytest.raises(SystemExit, match=r'--out /proc/m.png: cannot write into /proc'):
    predict.main(args + ['--out', '/proc/m.png'])
  (tmp_path / 'theirs.tiff').write_bytes(b'II*\x00 not ours')
  with pytest.raises(SystemExit, match='theirs.tiff: exists and was not written by predict'):
    predict.main(args + ['--out', str(tmp_path / 'm.png'), '--raw', str(tmp_path / 'theirs.tiff')])
  assert not loaded  # every refusal came before the model loaded


def test_a_work_directory_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
  """No traceback for a work directory path that cannot be made, or a folder the process may not write (simulated:
  this suite runs as root, for whom permissions do not apply)."""
  (tmp_path / 'file').write_text('not a folder')
  res = _cli('--config', 'synthetic', f'--config.workdir={tmp_path / "file" / "w"}')
  assert res.returncode == 1 and 'Traceback' not in res.stderr
  assert res.stderr.strip().splitlines()[-1] == (f'error: {tmp_path / "file" / "w"}: cannot create the work '
                                                  'directory (Not a directory)')
  from g2sf_jax import workdir as workdir_lib
  real_open = os.open

  def read_only(path, flags, *args):
    if flags & os.O_CREAT:
      raise PermissionError(13, 'Permission denied', str(path))
    return real_open(path, flags, *args)

  monkeypatch.setattr(workdir_lib.os, 'open', read_only)
  with pytest.raises(UserError, match=r'g2sf-workdir.json: cannot write here \(Permission denied\)'):
    workdir_lib.Workdir(tmp_path / 'ro').create()
