import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch
from sklearn.metrics import roc_auc_score

from experiments.configs.common import get_base_config
from g2sf_jax import distributed
from g2sf_jax.methods.g2sf import train as fusion_train
from g2sf_jax.methods.g2sf.dataset import FusionData

MESH = distributed.make_mesh()

RGB, PCD, K = 8, 12, 64


def toy_config(epochs=6) -> ml_collections.ConfigDict:
  c = get_base_config()
  c.g2sf.hidden, c.g2sf.emb_dim, c.g2sf.epochs, c.g2sf.batch_size = 32, 8, epochs, 64
  c.g2sf.lr, c.g2sf.lr_scale = 1e-2, 5e-2  # few steps: larger than the reference's 1.5e-4 / 5e-3
  return c


def toy_coresets(seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(K, RGB)).astype(np.float32), rng.normal(size=(K, PCD)).astype(np.float32)


def toy_rows(n, coresets, seed, anomaly_rate=0.3):
  """Normal patches sit near a coreset row; anomalies are pushed along two dims of one modality."""
  rng = np.random.default_rng(seed)
  img = coresets[0][rng.integers(0, K, n)] + 0.3 * rng.normal(size=(n, RGB))
  pcd = coresets[1][rng.integers(0, K, n)] + 0.3 * rng.normal(size=(n, PCD))
  label = (rng.random(n) < anomaly_rate).astype(np.uint8)
  in_img = rng.random(n) < 0.5
  img[(label == 1) & in_img, :2] += 2.0
  pcd[(label == 1) & ~in_img, :2] += 2.0
  return img.astype(np.float32), pcd.astype(np.float32), label


def knn(q, bank, k):
  d = np.sqrt(((q[:, None] - bank[None]) ** 2).sum(-1))
  idx = np.argsort(d, 1, kind='stable')[:, :k]
  return np.take_along_axis(d, idx, 1), idx


def toy_data(n=1600, seed=1) -> tuple[FusionData, tuple]:
  cs = toy_coresets()
  img, pcd, label = toy_rows(n, cs, seed)
  dr, ir = knn(img, cs[0], 20)
  dp, ip = knn(pcd, cs[1], 20)
  return FusionData(feature=np.concatenate([img, pcd], 1), score=np.stack([dr[:, 0], dp[:, 0]], 1).astype(np.float32),
                    label=label, anchor_idx=np.concatenate([ir, ip], 1).astype(np.int32)), cs


def test_optax_coupled_adam_equals_torch():
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(5, 3)).astype(np.float32)
  grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(5)]
  c = ml_collections.ConfigDict(dict(lr=1.5e-4, lr_scale=5e-3, weight_decay=1e-4))
  params = {'lspn': {'w': jnp.asarray(w0)}, 'theta': jnp.asarray([0.3, -0.2])}
  tx = fusion_train.make_optimizer(c)
  state = tx.init(params)
  wt = torch.nn.Parameter(torch.from_numpy(w0.copy()))
  tt = torch.nn.Parameter(torch.tensor([0.3, -0.2]))
  opt_w = torch.optim.Adam([wt], lr=1.5e-4, weight_decay=1e-4)
  opt_t = torch.optim.Adam([tt], lr=5e-3, weight_decay=1e-4)
  for g in grads:
    gt = np.array([g[0, 0], g[1, 1]])
    upd, state = tx.update({'lspn': {'w': jnp.asarray(g)}, 'theta': jnp.asarray(gt)}, state, params)
    params = optax.apply_updates(params, upd)
    wt.grad, tt.grad = torch.from_numpy(g), torch.from_numpy(gt.astype(np.float32))
    opt_w.step()
    opt_t.step()
  np.testing.assert_allclose(np.asarray(params['lspn']['w']), wt.detach().numpy(), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(params['theta']), tt.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_sampling_helpers():
  assert fusion_train.batch_size(2_000_000, 8192) == 8192 and fusion_train.batch_size(1000, 8192) == 35
  with pytest.raises(ValueError, match='too small'):
    fusion_train.batch_size(40, 8192)
  assert fusion_train.batch_size(60, 8192) == 2
  odd = distributed.replicated(MESH) if 35 % MESH.size else distributed.row_sharded(MESH)
  assert fusion_train.batch_sharding(35, MESH).spec == odd.spec
  assert fusion_train.batch_sharding(35 * MESH.size, MESH).spec == distributed.row_sharded(MESH).spec
  tr, va = fusion_train.split(11, np.random.default_rng(0))
  assert len(tr) == 6 and len(va) == 5 and sorted(np.concatenate([tr, va])) == list(range(11))
  labels = (np.arange(1000) % 10 == 0).astype(np.int64)  # 10% anomalous
  b = fusion_train.balanced_batches(np.arange(1000), labels, 64, np.random.default_rng(0))
  assert b.shape == (15, 64)
  assert 0.4 < labels[b].mean() < 0.6


def test_training_lowers_loss_and_separates(tmp_path):
  from g2sf_jax.methods.g2sf import infer
  data, cs = toy_data()
  log = []
  state = fusion_train.train(toy_config(epochs=6), data, cs, tmp_path, jax.random.key(0), mesh=MESH,
                             on_epoch_end=lambda e, m: log.append(m))
  assert len(log) == 6 and log[-1]['loss'] < 0.85 * log[0]['loss']
  assert 'val' in log[1] and 'val' not in log[0]
  assert state.best_val == min(m['val'] for m in log[1:])
  np.testing.assert_allclose(state.mu, data.score[data.label == 0].mean(0), rtol=0.1)
  img, pcd, label = toy_rows(600, cs, seed=7)
  _, ir = knn(img, cs[0], 6)
  _, ip = knn(pcd, cs[1], 6)
  out = infer.patch_scores(state, toy_config().g2sf, img, pcd, cs[0][ir], cs[1][ip], np.zeros(len(img), bool))
  assert roc_auc_score(label, np.asarray(out['score'])) > 0.9


def test_resume_continues_the_same_run(tmp_path):
  data, cs = toy_data(n=800)
  cfg = toy_config(epochs=3)
  full = fusion_train.train(cfg, data, cs, tmp_path / 'a', jax.random.key(3), mesh=MESH)

  def stop(epoch, _):
    if epoch == 1:
      raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    fusion_train.train(cfg, data, cs, tmp_path / 'b', jax.random.key(3), mesh=MESH, on_epoch_end=stop)
  seen = []
  resumed = fusion_train.train(cfg, data, cs, tmp_path / 'b', jax.random.key(3), mesh=MESH,
                               on_epoch_end=lambda e, m: seen.append(e))
  assert seen == [2]
  jax.tree.map(np.testing.assert_array_equal, full.lspn_params, resumed.lspn_params)
  np.testing.assert_array_equal(full.theta, resumed.theta)
  assert full.best_val == resumed.best_val and full.epoch == resumed.epoch
  with pytest.raises(ValueError, match='other data'):
    fusion_train.train(cfg, data, cs, tmp_path / 'b', jax.random.key(4), mesh=MESH)


def test_batches_gathered_on_the_device_train_the_same(tmp_path, monkeypatch):
  data, cs = toy_data(n=800)
  cfg = toy_config(epochs=3)
  gathers = []
  make_steps = fusion_train.make_steps
  monkeypatch.setattr(fusion_train, 'make_steps', lambda *a, **kw: gathers.append(kw['gather']) or make_steps(*a, **kw))
  logs = {True: [], False: []}
  states = {on: fusion_train.train(cfg, data, cs, tmp_path / str(on), jax.random.key(2), mesh=MESH, data_on_device=on,
                                   on_epoch_end=lambda e, m, on=on: logs[on].append(m))
            for on in (True, False)}
  assert gathers == [True, False]
  fusion_train.train(cfg, data, cs, tmp_path / 'True', jax.random.key(2), mesh=MESH, data_on_device=True)
  assert gathers[-1] is False  # a finished run places nothing on the device
  close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)  # XLA's other fusions: float rounding
  jax.tree.map(close, states[True].lspn_params, states[False].lspn_params)
  close(states[True].theta, states[False].theta)
  assert len(logs[True]) == len(logs[False]) == 3 and 'val_auroc' in logs[True][-1]
  for got, want in zip(logs[True], logs[False]):
    assert got.keys() == want.keys()
    close([got[k] for k in want], [want[k] for k in want])
  assert fusion_train._table_on_device(data, MESH, None) is None  # on CPU the batches come from the host
  placed = fusion_train._table_on_device(data, MESH, True)
  np.testing.assert_array_equal(placed['feature'], data.feature)
  np.testing.assert_array_equal(placed['normal'], data.label == 0)


_ONE_STEP = textwrap.dedent('''
  import json, sys
  import jax, numpy as np
  sys.path.insert(0, {root!r})
  from g2sf_jax import distributed
  from g2sf_jax.methods.g2sf import train as ft
  from tests.methods.g2sf.test_train import toy_config, toy_data
  data, cs = toy_data(n=400)
  cfg = toy_config()
  out = {{}}
  for n in (1, 8):
    mesh = distributed.make_mesh(devices=jax.devices()[:n])
    step, _, tx = ft.make_steps(cfg.g2sf, mesh)
    params = ft.init_params(cfg, jax.random.key(0), data.feature.shape[1])
    batch = jax.device_put(ft._host_batch(data, np.arange(64) * 5), distributed.row_sharded(mesh))
    assert len(batch['feature'].sharding.device_set) == n
    _, _, terms = step(params, tx.init(params), batch, cs, np.float32([1.0, 1.2]), np.float32(4.0), jax.random.key(5))
    out[n] = {{k: float(v) for k, v in terms.items()}}
  # A data-limited batch of 14 rows (0.7·400 // 20), not a multiple of 8: replicated, the same training.
  for n in (1, 8):
    mesh = distributed.make_mesh(devices=jax.devices()[:n])
    state = ft.train(toy_config(epochs=2), data, cs, f'{{sys.argv[1]}}/{{n}}', jax.random.key(1), mesh=mesh)
    out[f'train{{n}}'] = [np.asarray(x).tolist() for x in jax.tree.leaves(state.lspn_params)] + [state.best_val]
  # A batch of 56 rows split over 8 devices, gathered there from the fusion table, against 1 device's host batches.
  data, cs = toy_data(n=1600)
  for n in (1, 8):
    mesh = distributed.make_mesh(devices=jax.devices()[:n])
    state = ft.train(toy_config(epochs=2), data, cs, f'{{sys.argv[1]}}/gather{{n}}', jax.random.key(1), mesh=mesh,
                     data_on_device=n == 8)
    out[f'gather{{n}}'] = [np.asarray(x).tolist() for x in jax.tree.leaves(state.lspn_params)] + [state.best_val]
  print(json.dumps(out))
''')


@pytest.mark.slow
def test_one_and_eight_devices_give_the_same_loss_and_training(tmp_path):
  root = str(Path(__file__).resolve().parents[3])
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  res = subprocess.run([sys.executable, '-c', _ONE_STEP.format(root=root), str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=600, cwd=root)
  assert res.returncode == 0, res.stderr[-3000:]
  assert 'does not divide over 8 devices' in res.stderr
  out = json.loads(res.stdout.strip().splitlines()[-1])
  for k in ('loss', 'separation', 'margin', 'scaling', 'alignment', 'consistency', 'l1'):
    np.testing.assert_allclose(out['8'][k], out['1'][k], rtol=2e-6, err_msg=k)
  for name in ('train', 'gather'):
    assert len(out[f'{name}8']) == len(out[f'{name}1']) > 2
    for got, want in zip(out[f'{name}8'], out[f'{name}1']):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
  for n in (1, 8):
    assert json.loads((tmp_path / str(n) / 'state' / 'g2sf_meta.json').read_text())['batch'] == 14
    assert json.loads((tmp_path / f'gather{n}' / 'state' / 'g2sf_meta.json').read_text())['batch'] == 56
