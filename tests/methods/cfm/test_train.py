"""CFM training: the two losses and their gradients against PyTorch, one Adam step, and a run that resumes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
import torch

from experiments.configs.common import get_base_config
from g2sf_jax import distributed
from g2sf_jax.methods.cfm import train as cfm_train
from g2sf_jax.methods.cfm import mlp as cfm_mlp
from references import torch_cfm

MESH = distributed.make_mesh()


def _nets(seed=0):
  torch.manual_seed(seed)
  n23, n32 = torch_cfm.FeatureProjectionMLP(6, 10), torch_cfm.FeatureProjectionMLP(10, 6)
  params = {'2d_to_3d': cfm_mlp.params_from_torch({k: v.detach().numpy() for k, v in n23.state_dict().items()}),
            '3d_to_2d': cfm_mlp.params_from_torch({k: v.detach().numpy() for k, v in n32.state_dict().items()})}
  return n23, n32, params


def _batch(seed=0):
  g = torch.Generator().manual_seed(seed)
  rgb, xyz = torch.randn(2, 50, 6, generator=g), torch.randn(2, 50, 10, generator=g)
  xyz[0, :12] = 0  # background pixels
  return rgb, xyz


def test_losses_gradients_and_an_adam_step_match_torch():
  n23, n32, params = _nets()
  rgb, xyz = _batch()
  l23, l32 = torch_cfm.losses(n23, n32, rgb, xyz)
  l32.backward()  # the reference's two backward passes
  l23.backward()
  keep = (xyz.sum(-1) != 0).reshape(-1).numpy()
  rows = lambda t: t.reshape(-1, t.shape[-1]).numpy()

  def objective(p):
    t = cfm_train.losses(p, rows(rgb), rows(xyz), keep)
    return t['2d_to_3d'] + t['3d_to_2d'], t

  (_, terms), grads = jax.value_and_grad(objective, has_aux=True)(params)
  assert float(terms['2d_to_3d']) == pytest.approx(l23.item(), rel=1e-5)
  assert float(terms['3d_to_2d']) == pytest.approx(l32.item(), rel=1e-5)
  for name, net in (('2d_to_3d', n23), ('3d_to_2d', n32)):
    want = cfm_mlp.params_from_torch({k: p.grad.numpy() for k, p in net.named_parameters()})
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads[name], want)
  optimizer = torch.optim.Adam(list(n23.parameters()) + list(n32.parameters()))  # torch defaults: lr 1e-3
  optimizer.step()
  step, tx = cfm_train.make_step(1e-3, MESH)
  params, _, _ = step(params, tx.init(params), rows(rgb), rows(xyz), keep)
  for name, net in (('2d_to_3d', n23), ('3d_to_2d', n32)):
    want = cfm_mlp.params_from_torch({k: v.detach().numpy() for k, v in net.state_dict().items()})
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params[name], want)


def test_training_lowers_the_loss_and_resumes(tmp_path):
  c = ml_collections.ConfigDict({'cfm': get_base_config().cfm.to_dict()})
  c.cfm.epochs, c.cfm.batch_size, c.cfm.lr = 10, 2, 1e-2
  rng = np.random.default_rng(0)
  rgb = rng.normal(size=(5, 64, 6)).astype(np.float32)
  xyz = np.tanh(rgb @ rng.normal(size=(6, 10))).astype(np.float32)
  batch_rows = lambda idx: (rgb[idx], xyz[idx], np.zeros((len(idx), 64), bool))
  logged = []
  full = cfm_train.train(c, 5, batch_rows, 6, 10, tmp_path / 'a', jax.random.key(0), mesh=MESH, log=logged.append)
  first, last = (float(logged[i].split('2D→3D ')[1].split(',')[0]) for i in (0, -1))
  assert last < 0.8 * first

  def stop(msg):
    if 'epoch 6/' in msg:
      raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    cfm_train.train(c, 5, batch_rows, 6, 10, tmp_path / 'b', jax.random.key(0), mesh=MESH, log=stop)
  resumed = cfm_train.train(c, 5, batch_rows, 6, 10, tmp_path / 'b', jax.random.key(0), mesh=MESH)
  jax.tree.map(np.testing.assert_array_equal, full, resumed)


_ON_DEVICES = '''
import json, pathlib, sys
import jax, ml_collections, numpy as np
sys.path.insert(0, {root!r})
from experiments.configs.common import get_base_config
from g2sf_jax import distributed
from g2sf_jax.methods.cfm import train as cfm_train
c = ml_collections.ConfigDict({{'cfm': get_base_config().cfm.to_dict()}})
c.cfm.epochs, c.cfm.batch_size, c.cfm.lr = 2, 2, 1e-2
rng = np.random.default_rng(0)
rgb = rng.normal(size=(5, 64, 6)).astype(np.float32)
xyz = np.tanh(rgb @ rng.normal(size=(6, 10))).astype(np.float32)
bg = rng.random((5, 64)) < 0.2
out = {{}}
for n in (1, 3):
  mesh = distributed.make_mesh(devices=jax.devices()[:n])
  params = cfm_train.train(c, 5, lambda idx: (rgb[idx], xyz[idx], bg[idx]), 6, 10, pathlib.Path(sys.argv[1] + str(n)),
                           jax.random.key(0), mesh=mesh, log=lambda m: None)
  out[n] = [np.asarray(x).tolist() for x in jax.tree.leaves(params)]
print(json.dumps(out))
'''


def test_three_devices_train_what_one_does(tmp_path):
  """128 pixel rows per batch do not divide over 3 devices: padded with excluded rows, the same training."""
  root = str(Path(__file__).resolve().parents[3])
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=3', JAX_PLATFORMS='cpu')
  res = subprocess.run([sys.executable, '-c', _ON_DEVICES.format(root=root), str(tmp_path / 'w')], env=env,
                       capture_output=True, text=True, timeout=300, cwd=root)
  assert res.returncode == 0, res.stderr[-3000:]
  out = json.loads(res.stdout.strip().splitlines()[-1])
  for got, want in zip(out['3'], out['1']):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
