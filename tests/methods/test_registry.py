"""A new method is a module and one registry entry: the runner and the detector need nothing else."""
import numpy as np
import pytest

from experiments import runner, stages
from experiments.configs import synthetic
from g2sf_jax import detector, methods
from g2sf_jax.features import load_cached
from g2sf_jax.methods import base
from g2sf_jax.workdir import Workdir


def _fit(ctx: base.StageContext) -> dict:
  """One number per class from the train features: the spread of the train patches."""
  train = ctx.features('train')
  spread = float(np.std(np.concatenate([v.reshape(-1) for v in train.values()])))
  np.save(ctx.out_dir / 'spread.npy', np.float32(spread))
  return {'spread': spread}


class SpreadScorer(base.Scorer):
  rows = ('SPREAD',)
  needs = ('pcd',)

  def __init__(self, spread: float, seed: int):
    noise = np.random.default_rng(seed).random((224, 224), dtype=np.float32)
    self.arrays = {'spread': np.float32(spread), 'noise': noise}

  def apply(self, arrays, feats):
    x = feats['pcd']
    image = x.reshape(x.shape[0], -1).std(1) / arrays['spread']
    return {'SPREAD': {'image': image, 'maps': image[:, None, None] * arrays['noise'][None]}}


class Spread(base.Method):
  """A trivial baseline: a sample's feature spread relative to the train set's, a random map scaled by it."""
  name = 'spread'

  def rows(self, config):
    return ('SPREAD',)

  def stages(self, config):
    return (base.Stage('fit', _fit, owner=self.name, deps=('extract',), keys=('seed',)),)

  def scorer(self, ctx):
    return SpreadScorer(float(np.load(ctx.dir('spread/fit') / 'spread.npy')), ctx.config.seed)


def test_registered_method_runs_end_to_end(tmp_path, monkeypatch):
  monkeypatch.setitem(methods.REGISTRY, 'spread', Spread())
  c = synthetic.get_config()
  c.workdir = str(tmp_path)
  c.checkpoints.efficientnet_lite0 = str(tmp_path / 'checkpoints' / 'efficientnet_lite0')
  c.synthetic.classes, c.synthetic.size, c.synthetic.n_train, c.synthetic.n_test = 'cube', 200, 4, 8
  c.method = 'spread'
  table = runner.run(c)
  assert table['rows'] == ['SPREAD']
  assert all(0 <= v <= 1 for v in table['classes']['cube']['SPREAD'].values())
  wd = Workdir(tmp_path)
  assert (wd.report_dir('spread') / 'report.html').is_file() and wd.methods() == ['spread']
  assert wd.home('spread/fit', 'cube').current().info['spread'] > 0
  # The generic detector loads the new method's scorer and reproduces the evaluation from the cached features.
  det = detector.Detector.load(tmp_path, 'cube', with_backbones=False)
  assert det.rows == ('SPREAD',) and det.main_row == 'SPREAD'
  feats = load_cached(wd.home(stages.stage_folder(c, 'extract'), 'cube').current().path / 'test')
  scores = det.scores(feats)
  with np.load(wd.home('spread/evaluate', 'cube').current().path / 'evaluation.npz') as z:
    np.testing.assert_array_equal(scores['SPREAD'].image, z['score_SPREAD'])
    np.testing.assert_array_equal(scores['SPREAD'].maps, z['map_SPREAD'])


def test_unknown_method_lists_the_registry(tmp_path):
  c = synthetic.get_config()
  c.workdir = str(tmp_path)
  c.method = 'g2fs'
  known = r"\['btf', 'cfm', 'g2sf', 'm3dm', 'patchcore'\]"
  with pytest.raises(ValueError, match=r"config.method = 'g2fs' is not one of " + known):
    runner.Runner(c)


def test_stage_graph_rejects_unknown_dependencies():
  class Broken(Spread):
    def stages(self, config):
      return (base.Stage('fit', _fit, owner='broken', deps=('nothing/here',)),)

  with pytest.raises(ValueError, match="stage broken/fit depends on \\['nothing/here'\\]"):
    stages.stage_graph(Broken(), synthetic.get_config())
