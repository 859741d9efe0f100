"""PointMAE encoder (algorithms.md §2.2, §2.3) against the PyTorch reference in references/, weights via the real
port."""
import time

import jax
import numpy as np
import pytest
import torch

from g2sf_jax import checkpoints
from g2sf_jax.models import point_mae
from g2sf_jax.ops import buckets
from g2sf_jax.ops import fps
from g2sf_jax.ops import knn
from ports import point_mae as port
from references import torch_point_mae as ref


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """A randomised reference model saved the way Point-MAE saves pretrain.pth, then converted by ports.point_mae."""
  tmp = tmp_path_factory.mktemp('point_mae')
  model = ref.randomize(ref.PointMAEEncoder(), seed=0)
  state = {'module.MAE_encoder.' + k: v for k, v in model.state_dict().items()}
  state.update({'module.MAE_decoder.blocks.0.norm1.weight': torch.ones(384),
                'module.mask_token': torch.zeros(1, 1, 384),
                'module.decoder_pos_embed.0.weight': torch.zeros(128, 3),
                'module.increase_dim.0.weight': torch.zeros(96, 384, 1)})
  torch.save({'base_model': state, 'epoch': 300}, tmp / 'pretrain.pth')
  assert port.main([str(tmp / 'pretrain.pth'), str(tmp / 'point_mae')]) == 0
  variables, meta = checkpoints.load(tmp / 'point_mae')
  assert meta['known_file'] == 'not a known official file'
  return model, variables


@pytest.fixture
def fresh(converted):
  """Undoes the running-stat updates that train-mode forwards make in the torch model (as in the reference)."""
  model, variables = converted
  state = {k: v.clone() for k, v in model.state_dict().items()}
  yield model, variables
  model.load_state_dict(state)


def surface(n: int, seed: int) -> np.ndarray:
  """A bumpy sheet in raw, off-origin coordinates, like an organised scan's valid points."""
  rng = np.random.default_rng(seed)
  xy = rng.uniform(-1, 1, size=(n, 2))
  z = 0.2 * np.sin(3 * xy[:, :1]) * np.cos(2 * xy[:, 1:]) + 2.0
  return np.concatenate([xy, z], axis=1).astype(np.float32)


def torch_features(model, cloud, num_group, group_size):
  with torch.no_grad():
    neighborhood, centers, idx = ref.group(torch.from_numpy(cloud), num_group, group_size)
    return model(neighborhood, centers).numpy(), idx.numpy()


def flax_features(variables, clouds, num_group, group_size, **kwargs):
  points, valid = buckets.pad_batch(clouds)
  neighborhood, centers = knn.group(points, valid, num_group, group_size)
  feats, inter = jax.jit(point_mae.PointMAE(**kwargs).apply)(variables, neighborhood, centers)
  return np.asarray(feats), np.asarray(fps.farthest_point_sample(points, valid, num_group)), inter


def test_batched_clouds_match_reference_with_per_cloud_batch_stats(fresh):
  model, variables = fresh
  model.train()  # the reference never calls .eval() (algorithms.md §2.3)
  clouds = [surface(1500, 0), surface(900, 1) * 3.0]  # different sizes and scales share one padded batch
  got, centre_idx, inter = flax_features(variables, clouds, 64, 32)
  assert got.shape == (2, 64, 1152)
  assert set(inter) >= {'tokens', 'pos', 'block_0', 'block_11'}
  for b, cloud in enumerate(clouds):
    want, want_idx = torch_features(model, cloud, 64, 32)
    np.testing.assert_array_equal(centre_idx[b], want_idx)
    err = np.abs(got[b] - want).max()
    assert err <= 1e-4, err


def test_running_stats_match_eval_mode(fresh):
  model, variables = fresh
  model.eval()
  cloud = surface(1200, 2)
  got, _, _ = flax_features(variables, [cloud], 32, 16, batchnorm='running_stats')
  want, _ = torch_features(model, cloud, 32, 16)
  assert np.abs(got[0] - want).max() <= 1e-4
  model.train()
  batch_stats, _ = torch_features(model, cloud, 32, 16)
  assert np.abs(batch_stats - want).max() > 1e-2  # the switch really changes the statistics


@pytest.mark.slow
def test_reference_size_512x128(fresh):
  model, variables = fresh
  model.train()
  cloud = surface(8000, 3)
  start = time.perf_counter()
  got, centre_idx, _ = flax_features(variables, [cloud], 512, 128)
  elapsed = time.perf_counter() - start
  want, want_idx = torch_features(model, cloud, 512, 128)
  np.testing.assert_array_equal(centre_idx[0], want_idx)
  err = np.abs(got[0] - want).max()
  print(f'512x128 on 8000 points: max abs err {err:.2e}, flax {elapsed:.1f}s incl. compile')
  assert err <= 1e-4, err


def test_stochastic_drop_path_is_per_sample_and_seeded(converted):
  _, variables = converted
  cloud = surface(600, 4)
  points, valid = buckets.pad_batch([cloud, cloud])
  neighborhood, centers = knn.group(points, valid, 16, 16)
  model = point_mae.PointMAE(drop_path='stochastic', drop_path_rate=0.5)
  run = jax.jit(lambda v, n, c, key: model.apply(v, n, c, rngs={'drop_path': key})[0])
  a = np.asarray(run(variables, neighborhood, centers, jax.random.key(0)))
  b = np.asarray(run(variables, neighborhood, centers, jax.random.key(0)))
  np.testing.assert_array_equal(a, b)
  assert np.abs(a[0] - a[1]).max() > 1e-3  # same cloud, different per-sample masks
  off = np.asarray(jax.jit(point_mae.PointMAE().apply)(variables, neighborhood, centers)[0])
  np.testing.assert_allclose(off[0], off[1], atol=1e-6)
  with pytest.raises(Exception, match='drop_path'):
    jax.eval_shape(model.apply, variables, neighborhood, centers)


def test_bad_switch_values_are_named(converted):
  _, variables = converted
  with pytest.raises(ValueError, match='batchnorm'):
    point_mae.PointMAE(batchnorm='eval').apply(variables, np.zeros((1, 2, 4, 3)), np.zeros((1, 2, 3)))
