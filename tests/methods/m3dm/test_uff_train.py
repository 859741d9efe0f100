"""M3DM's UFF training pieces: the contrastive loss and its gradients against PyTorch, the training pairs, the
schedules, and a short training run that resumes exactly."""
import jax
import ml_collections
import numpy as np
import pytest
import torch

from experiments.configs.common import get_base_config
from g2sf_jax import distributed
from g2sf_jax.errors import DataError
from g2sf_jax.methods.m3dm import uff
from g2sf_jax.methods.m3dm import uff_net as uff_model
from references import torch_m3dm

MESH = distributed.make_mesh()


def _torch_block(seed=0):
  torch.manual_seed(seed)
  ref = torch_m3dm.FeatureFusionBlock(12, 8, head=16)
  for p in ref.parameters():
    torch.nn.init.normal_(p, std=0.3)
  return ref


def test_loss_and_gradients_match_torch():
  ref = _torch_block()
  xyz, rgb = torch.randn(2, 20, 12), torch.randn(2, 20, 8)
  xyz[0, 3, 5] = 0.0   # one exact zero drops the patch
  xyz[1, 7:10] = 0.0   # background patches
  loss = ref(xyz, rgb)
  loss.backward()
  params = uff_model.params_from_torch({k: v.detach().numpy() for k, v in ref.state_dict().items()})
  grads_ref = uff_model.params_from_torch({k: p.grad.numpy() for k, p in ref.named_parameters()})
  point, colour = xyz.reshape(-1, 12).numpy(), rgb.reshape(-1, 8).numpy()
  keep = np.all(point != 0, axis=1)
  pad = 6  # padding rows (a bucketed micro-batch) must not change anything
  point = np.concatenate([point, np.ones((pad, 12), np.float32)])
  colour = np.concatenate([colour, np.ones((pad, 8), np.float32)])
  keep = np.concatenate([keep, np.zeros(pad, bool)])

  def objective(p):
    _, inter = uff_model.UFF(head_dim=16).apply({'params': p}, point, colour)
    return uff.contrastive_loss(inter['q'], inter['k'], keep)

  ours, grads = jax.value_and_grad(objective)(params)
  np.testing.assert_allclose(float(ours), loss.item(), rtol=1e-5)
  for (path, g), (_, want) in zip(jax.tree_util.tree_leaves_with_path(grads),
                                  jax.tree_util.tree_leaves_with_path(grads_ref)):
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6 * np.abs(want).max(), err_msg=str(path))


def test_training_pairs_follow_the_reference_files():
  # The reference stores rgb_patch.repeat(4, 1).reshape(784, 4, -1).permute(1, 0, 2).reshape(3136, -1).
  rgb = torch.arange(784).float()[:, None]
  stored = rgb.repeat(4, 1).reshape(784, 4, -1).permute(1, 0, 2).reshape(3136, -1)[:, 0].long().numpy()
  np.testing.assert_array_equal(uff.scrambled_rgb_index(), stored)
  up = torch.nn.functional.interpolate(torch.arange(784).float().reshape(1, 1, 28, 28), size=56)  # test-time pairs
  np.testing.assert_array_equal(uff.aligned_rgb_index(), up.reshape(-1).long().numpy())
  img = np.random.default_rng(0).normal(size=(28, 28, 3)).astype(np.float32)
  pcd = np.random.default_rng(1).normal(size=(56, 56, 5)).astype(np.float32)
  pcd[0, :10] = 0
  rows = uff.sample_rows(img, pcd, 'aligned')
  assert rows.shape == (3136 - 10, 8)
  np.testing.assert_array_equal(rows[0, 5:], img[0, 5])  # row (0, 10) sits under RGB cell (0, 5)
  assert uff.kept(np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 3.0]]), 'reference').tolist() == [False, False, True]
  assert uff.kept(np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 3.0]]), 'foreground').tolist() == [True, False, True]


def _uff_config(**overrides):
  c = get_base_config().m3dm.uff
  c.update(overrides)
  return c


def test_schedules_start_at_zero():
  paper = _uff_config(steps=10, warmup_steps=4, lr=0.1)
  lrs = [uff.learning_rate(paper, u, 0, 0, 1) for u in range(10)]
  assert lrs[0] == 0 and lrs[4] == pytest.approx(0.1) and lrs[2] == pytest.approx(0.05) and lrs[-1] < 0.01
  code = _uff_config(schedule='code', epochs=3, warmup_epochs=1, lr=0.1)
  assert uff.learning_rate(code, 0, 0, 0, 10) == 0  # the reference's first update runs with lr 0
  assert uff.learning_rate(code, 0, 0, 5, 10) == pytest.approx(0.05)
  assert uff.learning_rate(code, 0, 2, 0, 10) == pytest.approx(0.05)  # half way down the cosine


def _rows(samples=6, seed=0):
  rng = np.random.default_rng(seed)
  counts = np.full(samples, 30)  # equal samples: one micro-batch size, one compilation
  offsets = np.concatenate([[0], np.cumsum(counts)])
  point = rng.normal(size=(offsets[-1], 6)).astype(np.float32)
  rgb = (point[:, :4] * 0.5 + 0.1 * rng.normal(size=(offsets[-1], 4))).astype(np.float32)
  return np.concatenate([point, rgb], 1), offsets


def _train_config(**uff_overrides):
  settings = dict(steps=8, warmup_steps=2, batch_size=2, accum=2, lr=0.01)
  return ml_collections.ConfigDict({'m3dm': {'uff': _uff_config(**dict(settings, **uff_overrides))}})


def test_training_lowers_the_loss_and_resumes_exactly(tmp_path):
  rows, offsets = _rows()
  logged = []
  learns = _train_config(steps=40, warmup_steps=2, accum=1)
  uff.train(learns, rows, offsets, 6, tmp_path / 'learn', jax.random.key(0), mesh=MESH, log=logged.append)
  losses = [float(m.rsplit(' ', 1)[1]) for m in logged if 'loss' in m]
  assert len(losses) == 20 and np.mean(losses[-5:]) < 0.92 * np.mean(losses[:3])
  full = uff.train(_train_config(), rows, offsets, 6, tmp_path / 'a', jax.random.key(0), mesh=MESH,
                   log=lambda m: None)

  def stop(msg):
    if 'update 6/8' in msg:
      raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    uff.train(_train_config(), rows, offsets, 6, tmp_path / 'b', jax.random.key(0), mesh=MESH, log=stop)
  resumed = uff.train(_train_config(), rows, offsets, 6, tmp_path / 'b', jax.random.key(0), mesh=MESH,
                      log=lambda m: None)
  jax.tree.map(np.testing.assert_array_equal, full, resumed)
  with pytest.raises(ValueError, match='other data'):
    uff.train(_train_config(), rows, offsets, 6, tmp_path / 'b', jax.random.key(1), mesh=MESH)


def test_training_keeps_few_micro_batches_in_flight(tmp_path, monkeypatch):
  """Nothing is read back per micro-batch, so without a bound the host would queue an epoch of batches."""
  appended = []

  class Recording(distributed.StepOutputs):
    def append(self, output):
      appended.append(self.depth)
      super().append(output)
  monkeypatch.setattr(distributed, 'StepOutputs', Recording)
  rows, offsets = _rows()
  uff.train(_train_config(), rows, offsets, 6, tmp_path, jax.random.key(0), mesh=MESH, log=lambda m: None)
  assert appended == [2] * 16  # 8 updates of 2 micro-batches, each through a queue of depth 2


def test_code_schedule_drops_the_incomplete_window(tmp_path):
  rows, offsets = _rows(samples=7)  # 3 micro-batches of 2 per epoch, windows of 2: one incomplete per epoch
  logged = []
  uff.train(_train_config(schedule='code', epochs=2, warmup_epochs=1), rows, offsets, 6, tmp_path, jax.random.key(0),
            mesh=MESH, log=logged.append)
  assert [m.split(':')[0] for m in logged] == ['UFF update 1/2', 'UFF update 2/2']
  assert 'lr 0,' in logged[0]


def test_a_schedule_without_updates_is_an_error(tmp_path):
  rows, offsets = _rows(samples=7)  # 3 micro-batches of 2 per epoch < accum 4: the code schedule makes no update
  with pytest.raises(DataError, match=r'makes no update: 7 samples give 3 micro-batches .* m3dm.uff.accum=4'):
    uff.train(_train_config(schedule='code', epochs=2, warmup_epochs=1, accum=4), rows, offsets, 6, tmp_path,
              jax.random.key(0), mesh=MESH)
  assert not (tmp_path / 'state').exists()


def test_pack_refuses_features_that_keep_nothing(tmp_path):
  feats = {'img': np.ones((2, 28, 28, 3), np.float32), 'pcd': np.zeros((2, 56, 56, 4), np.float32)}
  feats['pcd'][:, :, :, 0] = 1.0  # histogram-like: every patch has empty bins
  with pytest.raises(ValueError, match="uff_keep='foreground'"):
    uff.pack(tmp_path, ['a'], lambda name: feats, 'reference', 'reference')
  meta = uff.pack(tmp_path, ['a'], lambda name: feats, 'reference', 'foreground')
  assert meta == {'samples': 2, 'rows': 2 * 3136, 'point_dim': 4, 'rgb_dim': 3}
