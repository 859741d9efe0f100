"""M3DM's banks and scoring: the reference's normalisation and coreset sizing, and per-bank scores against PyTorch."""
import jax
import numpy as np
import pytest
import torch

from experiments.configs.common import get_base_config
from g2sf_jax import checkpoints, memory_bank
from g2sf_jax.methods.m3dm import method
from g2sf_jax.methods.m3dm import uff_net as uff_model
from tests.methods.context import FakeContext
from references import torch_m3dm


def _context(tmp_path, **m3dm):
  rng = np.random.default_rng(0)
  pcd = np.abs(rng.normal(size=(3, 56, 56, 6))).astype(np.float32) + 0.5
  pcd[:, :8] = 0  # background rows, part of the raw point bank (and of its mean)
  train = {'img': (rng.normal(size=(3, 28, 28, 4)) * 3 + 1).astype(np.float32), 'pcd': pcd}
  c = get_base_config()
  c.m3dm.update(m3dm)
  ctx = FakeContext(c, tmp_path, train, stage_id='m3dm/banks')
  checkpoints.save(ctx.dir('m3dm/uff') / 'uff', uff_model.init_params(uff_model.UFF(), jax.random.key(1), 6, 4))
  return ctx


def test_reference_banks_share_cross_wired_statistics_and_sizes(tmp_path):
  ctx = _context(tmp_path)
  info = method.build_banks(ctx)
  banks, _ = memory_bank.load(ctx.out_dir / method.BANK_CHECKPOINT)
  mean = float(np.mean(ctx.train['pcd'], dtype=np.float64))
  std = float(np.std(ctx.train['img'], dtype=np.float64, ddof=1))
  for name in method.BANKS:
    assert banks[name].normaliser.mean == pytest.approx(mean) and banks[name].normaliser.std == pytest.approx(std)
  k_xyz = int(0.1 * 3 * 3136)
  assert info['rgb'][0] == info['fused'][0] == int(0.1 * k_xyz)  # 0.1 × the point coreset, not × their banks
  assert info['xyz'][0] <= k_xyz + 1 and not banks['xyz'].coreset[-1].any()  # the appended all-zero row
  assert banks['xyz'].coreset_idx[-1] == -1


def test_per_bank_switch(tmp_path):
  ctx = _context(tmp_path, normalisation='per_bank', coreset_sizes='per_bank')
  info = method.build_banks(ctx)
  banks, _ = memory_bank.load(ctx.out_dir / method.BANK_CHECKPOINT)
  assert info == {'xyz': [int(0.1 * 9408), 6], 'rgb': [int(0.1 * 3 * 784), 4], 'fused': [int(0.1 * 9408), 10]}
  assert banks['rgb'].normaliser.mean == pytest.approx(float(np.mean(ctx.train['img'], dtype=np.float64)))


def test_bank_scores_match_the_torch_reference(tmp_path):
  ctx = _context(tmp_path)
  method.build_banks(ctx)
  banks, _ = memory_bank.load(ctx.out_dir / method.BANK_CHECKPOINT)
  params, _ = checkpoints.load(ctx.dir('m3dm/uff') / 'uff')
  scorer = method.BankScorer(banks, params, ctx.config, ctx.mesh)
  rng = np.random.default_rng(5)
  test = {'img': ctx.train['img'][:2] + rng.normal(size=(2, 28, 28, 4)).astype(np.float32),
          'pcd': ctx.train['pcd'][:2] * 1.2}
  results = scorer(test)
  fused = method.uff.fuse(params, test['img'], test['pcd'])
  raw = {'xyz': test['pcd'].reshape(2, -1, 6), 'rgb': test['img'].reshape(2, -1, 4), 'fused': fused}
  for name in method.BANKS:
    x = banks[name].normaliser(raw[name])
    alone = memory_bank.unimodal_scores_batch(x, banks[name].coreset, ctx.mesh, num_anchors=1, reweight_eps=0.0)
    for i in range(2):
      s, min_val = torch_m3dm.bank_score(torch.from_numpy(x[i]), torch.from_numpy(banks[name].coreset))
      np.testing.assert_allclose(alone[i].min_dist, min_val.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
      assert float(results[name].image[i]) == pytest.approx(s.item(), rel=1e-4), name
      grid = 28 if name == 'rgb' else 56
      up = torch_m3dm.upsample224(torch.from_numpy(alone[i].min_dist), grid).numpy()
      # blurred: the same map up to float rounding, which can move a few pixels across the uint8 blur's levels
      want = memory_bank.score_map(alone[i].min_dist)
      np.testing.assert_allclose(results[name].maps[i], want, rtol=0, atol=2 * float(want.max()) / 255)
      assert np.mean(np.isclose(results[name].maps[i], want, rtol=1e-5, atol=0)) > 0.999
      np.testing.assert_allclose(memory_bank.score_map(alone[i].min_dist, blur='none'), up, rtol=1e-5, atol=1e-6)
  s, maps = scorer.dlf_inputs(results)
  assert s.shape == (2, 3) and maps.shape == (2 * 224 * 224, 3)
  np.testing.assert_allclose(s[:, 1], 0.1 * results['rgb'].image, rtol=1e-6)  # λ_rgb


def test_fpfh_with_the_reference_keep_rule_is_refused_up_front():
  from experiments.configs import m3dm_synthetic
  from g2sf_jax.errors import ConfigError
  config = m3dm_synthetic.get_config()
  method.M3dm().check(config)
  config.m3dm.uff_keep = 'reference'
  with pytest.raises(ConfigError, match='FPFH histograms always have empty bins'):
    method.M3dm().check(config)
