"""The backbone registry (docs/interfaces.md "Backbones"): loading, errors, and PointMAE pixel features end to end.

The PointMAE backbone is checked against a composition of independent references: the PyTorch encoder and grouping in
references/, a float64 NumPy IDW (as G²SF computes it, algorithms.md §2.4), and a NumPy scatter to the pixel plane.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import torch

from experiments.configs import common as configs
from g2sf_jax import backbones
from g2sf_jax import checkpoints
from ports import common as port_common
from ports import efficientnet_lite0 as enl_port
from ports import point_mae as port
from references import torch_point_mae as ref


def organised_cloud(radius: float, seed: int) -> np.ndarray:
  """[224, 224, 3] with a disc of valid pixels on a curved surface; zeros elsewhere (invalid)."""
  rng = np.random.default_rng(seed)
  v, u = np.mgrid[0:224, 0:224] / 224.0
  xyz = np.stack([u - 0.5, v - 0.5, 1.0 + 0.3 * (u - 0.4) ** 2 + 0.01 * rng.random((224, 224))], -1)
  inside = (u - 0.5) ** 2 + (v - 0.45) ** 2 < radius ** 2
  inside[100, 100] = True
  inside[100, 101] = False
  return np.where(inside[..., None], xyz, 0.0).astype(np.float32)


def idw64(centers, feats, points):
  d2 = ((points[:, None].astype(np.float64) - centers[None].astype(np.float64)) ** 2).sum(-1)
  idx = np.argsort(d2, axis=1, kind='stable')[:, :3]
  w = 1.0 / (np.take_along_axis(d2, idx, 1) + 1e-8)
  return ((feats[idx].astype(np.float64)) * (w / w.sum(1, keepdims=True))[..., None]).sum(1)


@pytest.fixture
def config(tmp_path):
  c = configs.get_base_config()
  c.checkpoints.dino_vit_b8 = str(tmp_path / 'dino_vit_b8')
  c.checkpoints.point_mae = str(tmp_path / 'point_mae')
  c.point_mae.num_group = 32
  c.point_mae.group_size = 16
  return c


def test_missing_checkpoints_name_the_port_command(config):
  with pytest.raises(FileNotFoundError, match=r'python -m ports\.dino_vit SRC\.pth .*dino_vit_b8.*'
                                              r'without downloaded weights: --config\.rgb_backbone=efficientnet_lite0'):
    backbones.make_rgb_backbone(config)
  with pytest.raises(FileNotFoundError, match=r'python -m ports\.point_mae SRC\.pth .*point_mae.*'
                                              r'--config\.point_backbone=fpfh'):
    backbones.make_point_backbone(config)


def test_default_checkpoints_do_not_depend_on_the_current_directory(monkeypatch, tmp_path):
  monkeypatch.setenv('G2SF_HOME', str(tmp_path / 'home'))
  monkeypatch.chdir(tmp_path)
  c = configs.get_base_config()
  assert c.checkpoints.dino_vit_b8 == str(tmp_path / 'home' / 'checkpoints' / 'dino_vit_b8')
  monkeypatch.delenv('G2SF_HOME')
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
  assert configs.get_base_config().checkpoints.point_mae == str(tmp_path / 'cache' / 'g2sf-jax' / 'checkpoints' /
                                                                  'point_mae')


def test_unknown_name_lists_the_registry(config):
  config.point_backbone = 'pointnet'
  with pytest.raises(ValueError, match=r"'pointnet'.*'point_mae'"):
    backbones.make_point_backbone(config)


def test_converted_tree_that_does_not_fit_is_rejected(config):
  model = ref.randomize(ref.PointMAEEncoder(), seed=0)
  tree = port.convert_state({k: v.numpy() for k, v in model.state_dict().items()}, 'x')
  tree['params']['norm']['scale'] = np.ones(10, np.float32)
  checkpoints.save(config.checkpoints.point_mae, tree)
  with pytest.raises(ValueError, match=r'point_mae.*norm/scale: expected \(384,\), got \(10,\)'):
    backbones.make_point_backbone(config)


def test_point_mae_pixel_features_match_references(config):
  model = ref.randomize(ref.PointMAEEncoder(), seed=0).train()  # batch-stat BN (algorithms.md §2.3)
  checkpoints.save(config.checkpoints.point_mae,
                   port.convert_state({k: v.numpy() for k, v in model.state_dict().items()}, 'x'))
  backbone = backbones.make_point_backbone(config)
  assert (backbone.name, backbone.dim) == ('point_mae', 1152)
  xyz = np.stack([organised_cloud(0.2, 0), organised_cloud(0.12, 1)])  # ~2.0k and ~0.7k valid pixels
  got = np.asarray(backbone(xyz))
  assert got.shape == (2, 224, 224, 1152) and got.dtype == np.float32
  for b in range(2):
    valid = np.all(xyz[b] != 0, axis=-1)
    points = xyz[b][valid]  # raster order
    with torch.no_grad():
      neighborhood, centers, _ = ref.group(torch.from_numpy(points), 32, 16)
      feats = model(neighborhood, centers).numpy()
    want = np.zeros((224, 224, 1152), np.float32)
    want[valid] = idw64(centers.numpy(), feats, points)
    assert not got[b][~valid].any()  # exactly zero off the object
    err = np.abs(got[b] - want).max()
    assert err <= 1e-4, err


def test_efficientnet_lite0_is_converted_by_the_port_and_rejects_stale(tmp_path):
  converted = port_common.convert(enl_port.load_state(enl_port.packaged_path()), enl_port.table())
  config = ml_collections.ConfigDict({'rgb_backbone': 'efficientnet_lite0', 'modalities': 'rgb',
                                      'checkpoints': {'efficientnet_lite0': str(tmp_path / 'ck')}})
  with pytest.raises(FileNotFoundError, match=f'python -m ports.efficientnet_lite0 {tmp_path / "ck"}'):
    backbones.make_rgb_backbone(config)  # the library never converts: the port (or the runner calling it) does
  enl_port.ensure_for(config)
  backbone = backbones.make_rgb_backbone(config)
  assert checkpoints.exists(tmp_path / 'ck')
  assert backbone.meta['weights_sha256'] == enl_port.PACKAGED_SHA256 and backbone.dim == 152
  np.testing.assert_array_equal(np.asarray(backbone.variables['params']['block9']['dw_conv']['kernel']),
                                converted['params']['block9']['dw_conv']['kernel'])
  checkpoints.save(tmp_path / 'stale', {'params': {'stem_conv': {'kernel': np.zeros((3, 3, 3, 8), np.float32)}},
                                        'batch_stats': {}})
  config.checkpoints.efficientnet_lite0 = str(tmp_path / 'stale')
  with pytest.raises(ValueError, match='stale: not an EfficientNet-Lite0 checkpoint'):
    backbones.make_rgb_backbone(config)


_EXTRACT_DEVICES = textwrap.dedent('''
  import functools, os, sys
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  import jax, numpy as np
  from g2sf_jax import backbones, distributed
  from g2sf_jax.models import point_mae, vit
  tiny = vit.VisionTransformer(img_size=32, dim=32, depth=2, num_heads=2)
  vit_vars = jax.jit(tiny.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  mae = point_mae.PointMAE(dim=16, depth=2, num_heads=2, out_blocks=(0, 1))
  mae_vars = jax.jit(mae.init)(jax.random.key(1), np.zeros((1, 2, 4, 3), np.float32), np.zeros((1, 2, 3), np.float32))
  drop = point_mae.PointMAE(dim=16, depth=2, num_heads=2, out_blocks=(0, 1), drop_path='stochastic', drop_path_rate=0.5)
  parallel = distributed.batch_parallel
  rng = np.random.default_rng(0)
  rgb_in = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)  # 3 samples: not a multiple of 8
  v, u = np.mgrid[0:48, 0:48] / 48.0
  xyz_in = np.stack([np.where(((u - 0.5) ** 2 + (v - 0.5) ** 2 < r * r)[..., None],
                              np.stack([u, v, 1 + 0.1 * u * v + 0.01 * rng.random((48, 48))], -1), 0)
                     for r in (0.2, 0.3, 0.4)]).astype(np.float32)
  out = {}
  for n in (1, 8):
    mesh = distributed.make_mesh(devices=jax.devices()[:n])
    out[f'img{n}'] = np.asarray(backbones.DinoVitB8(vit_vars, tiny, mesh)(rgb_in))
    point = backbones.PointMaeBackbone(mae_vars, num_group=16, group_size=8, mesh=mesh, model=mae)
    out[f'pcd{n}'] = np.asarray(point(xyz_in))
    # Stochastic DropPath, each device running its samples one at a time (CPU) or together (accelerators).
    for together in (False, True):
      distributed.batch_parallel = functools.partial(parallel, one_at_a_time=not together)
      point = backbones.PointMaeBackbone(mae_vars, num_group=16, group_size=8, mesh=mesh, model=drop)
      out[f'drop{n}{together}'] = np.asarray(point(xyz_in, key=jax.random.key(7)))
      distributed.batch_parallel = parallel
  np.savez(sys.argv[1], **out)
''')


def test_feature_extraction_is_the_same_on_one_and_eight_devices(tmp_path):
  """Data parallel extraction: the batch split over 8 (forced host) devices gives the features of one."""
  root = Path(__file__).resolve().parents[1]
  (tmp_path / 'run.py').write_text(_EXTRACT_DEVICES)
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(root))
  env.pop('XLA_FLAGS', None)
  subprocess.run([sys.executable, str(tmp_path / 'run.py'), str(tmp_path / 'out.npz')], check=True, env=env,
                 timeout=600, cwd=root)
  got = np.load(tmp_path / 'out.npz')
  assert got['img1'].shape == (3, 4, 4, 32) and got['pcd1'].shape == (3, 48, 48, 32)
  assert np.abs(got['pcd1']).sum() > 0
  # Each device runs the one-device program on its rows; only the matmul blocking of other batch shapes can
  # round differently (measured ≤ 2e-6 on O(1) features).
  np.testing.assert_allclose(got['img8'], got['img1'], rtol=0, atol=1e-5)
  np.testing.assert_allclose(got['pcd8'], got['pcd1'], rtol=0, atol=1e-5)
  assert np.array_equal(got['pcd8'] == 0, got['pcd1'] == 0)  # the same valid pixels
  # Sample i draws its DropPath masks from fold_in(key, i) on any device count, alone on its device or not.
  for together in (False, True):
    np.testing.assert_allclose(got[f'drop8{together}'], got['drop1False'], rtol=0, atol=1e-5, err_msg=together)
    np.testing.assert_allclose(got[f'drop1{together}'], got['drop1False'], rtol=0, atol=1e-5, err_msg=together)
  assert np.abs(got['drop1False'] - got['pcd1']).max() > 1e-3  # the masks drop something
