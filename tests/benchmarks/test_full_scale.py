"""The full-scale rehearsal's pieces: random official-layout weights the ports accept, the config it runs, the
extrapolation and its table. (The rehearsal itself runs the paper's backbones for minutes: BENCHMARKS.md.)"""
import argparse
from pathlib import Path

import numpy as np
import pytest

from benchmarks import full_scale
from experiments import config_check
from experiments.configs import mvtec
from ports import common
from ports import dino_vit
from ports import point_mae


def test_random_state_fits_the_port_tables_with_usable_values():
  tables = (dino_vit.table(dino_vit.VitArch(img_size=16, patch_size=8, dim=32, depth=1, num_heads=2)),
            point_mae.table(dim=32, depth=1, mlp_hidden=64))
  for table in tables:
    state = {k: v.numpy() for k, v in full_scale.random_state(table, seed=0).items()}
    tree = common.convert(state, table)  # every key at its shape, or this raises
    leaves = [np.asarray(x) for x in _leaves(tree)]
    assert len(leaves) == len(table) and all(np.isfinite(x).all() for x in leaves)
  bn = full_scale.random_state(tables[1], seed=1)
  assert all((bn[k] > 0).all() for k in bn if k.endswith('running_var'))
  assert all(abs(float(bn[k].mean()) - 1) < 0.2 for k in bn if k.endswith('norm1.weight'))


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


def _args(fraction, epoch_fraction=1.0):
  return argparse.Namespace(fraction=fraction, epoch_fraction=epoch_fraction, workdir=Path('/tmp/w'), seed=3,
                            class_name='cube', train=200, test=100, size=800, fov=0.16, anomalies=800)


def test_overrides_make_a_valid_mvtec_sized_config(tmp_path):
  checkpoints = {'dino_vit_b8': tmp_path / 'dino', 'point_mae': tmp_path / 'pmae'}
  config = mvtec.get_config()
  config.update_from_flattened_dict(full_scale.overrides(_args(0.1, 0.1), checkpoints))  # unknown fields raise
  assert (config.synthetic.n_train, config.synthetic.n_test, config.synthesis.num_anomalies) == (20, 10, 80)
  assert (config.rgb_backbone, config.point_backbone, config.point_mae.num_group) == ('dino_vit_b8', 'point_mae', 512)
  assert (config.memory_bank.coreset_fraction, config.g2sf.epochs, config.g2sf.batch_size) == (0.1, 8, 8192)
  with pytest.raises(Exception, match='dino'):  # validated like any run: here the weights are missing
    config_check.validate(config)
  names = [name for name, _ in full_scale.stage_names_and_markers(full_scale.overrides(_args(1.0), checkpoints))]
  assert names == list(full_scale.COST_LAW)


def test_extrapolation_and_table():
  assert full_scale.extrapolate(10.0, 0.1, 1) == pytest.approx(100.0)
  assert full_scale.extrapolate(10.0, 0.1, 2) == pytest.approx(1000.0)
  assert full_scale.full_size('train', 10.0, 0.5, 0.1) == pytest.approx((200.0, 200.0))
  assert full_scale.full_size('evaluate', 10.0, 0.5, 0.1) == pytest.approx((20.0, 40.0))
  rows = [dict(stage='prepare', seconds=60.0, wall_s=70.0, rss_gib=1.5, full_s=(600.0, 600.0)),
          dict(stage='evaluate', seconds=30.0, full_s=(300.0, 3000.0)),  # cached: no process measurements
          dict(stage='train', seconds=6.0, wall_s=9.0, rss_gib=2.0, full_s=(600.0, 600.0))]
  text = full_scale.table(rows, 0.1, 0.1)
  assert '| prepare | 60 s | 70 s | 1.50 GiB | × (1/f) | 10.0 min |' in text
  assert '| evaluate | 30 s | — | — (cached) | × (1/f) … × (1/f)² | 5.0 – 50.0 min |' in text
  assert '| train | 6 s | 9 s | 2.00 GiB | × (1/f) × 10 (epochs) | 10.0 min |' in text
  assert text.rstrip().endswith('| total | 1.6 min | | | | 25.0 – 70.0 min |')
  assert 'extrapolated' not in full_scale.table(rows, 1.0, 1.0)


def test_a_smaller_lspn_batch_than_the_full_class_is_said(tmp_path, capsys):
  marker = tmp_path / 'fusion_data.done.json'
  plan = [('prepare', str(tmp_path / 'prepare.done.json')), ('fusion_data', str(marker))]
  marker.write_text('{"info": {"rows": 72366}}')
  full_scale._batch_caveat(plan, _args(0.05))
  assert 'batches of 2532 rows' in capsys.readouterr().out
  marker.write_text('{"info": {"rows": 2000000}}')  # 0.7·M/20 > 8,192: the full-size batch
  full_scale._batch_caveat(plan, _args(0.5))
  assert capsys.readouterr().out == ''


@pytest.mark.parametrize('flags, message', [(['--fraction', '0'], '--fraction must be in'),
                                            (['--size', '32'], '--size must be at least 64'),
                                            (['--fov', '0'], '--fov must be positive')])
def test_bad_flags_stop_before_anything_is_written(tmp_path, capsys, flags, message):
  with pytest.raises(SystemExit):
    full_scale.main(['--workdir', str(tmp_path / 'w')] + flags)
  assert message in capsys.readouterr().err
  assert not (tmp_path / 'w').exists()
