"""Exported backbones (DINO ViT and PointMAE, tiny random ones with the official layouts) equal the jitted ones
they come from, for any batch size and cloud size, and are lowered for cpu, cuda and tpu."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from g2sf_jax import backbones, distributed, manifest
from g2sf_jax.deploy import PLATFORMS, bundle
from g2sf_jax.deploy import export as exporting
from g2sf_jax.errors import ConfigError
from g2sf_jax.models import point_mae, vit


def _clouds(n, side=48, seed=0):
  rng = np.random.default_rng(seed)
  v, u = np.mgrid[0:side, 0:side] / side
  return np.stack([np.where(((u - 0.5) ** 2 + (v - 0.5) ** 2 < r * r)[..., None],
                            np.stack([u + 0.1, v + 0.1, 1 + 0.1 * u * v + 0.01 * rng.random((side, side))], -1), 0)
                   for r in (0.2, 0.45, 0.3)[:n]]).astype(np.float32)


def _listing(folder) -> dict:
  """A manifest's file list of what `folder` holds (programs load only files their manifest lists)."""
  return {'files': {rel: None for rel in manifest.files_below(folder)}}


def test_exported_dino_and_point_mae_equal_the_jitted_backbones(tmp_path):
  mesh = distributed.make_mesh(devices=jax.devices()[:1])
  b = jax.export.symbolic_shape('b')[0]
  tiny = vit.VisionTransformer(img_size=32, dim=32, depth=2, num_heads=2)
  dino = backbones.DinoVitB8(jax.jit(tiny.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32)), tiny, mesh)
  spec = exporting._export(tmp_path, 'rgb', dino.program, dino.variables,
                           [jax.ShapeDtypeStruct((b, 32, 32, 3), jnp.float32)], PLATFORMS)
  rgb = bundle.RgbProgram(bundle.Program(tmp_path, _listing(tmp_path), spec, {}), {'name': dino.name, 'dim': 32})
  images = np.random.default_rng(1).normal(size=(3, 32, 32, 3)).astype(np.float32)
  for count in (1, 3):
    assert np.array_equal(np.asarray(rgb(images[:count])), np.asarray(dino(images[:count])))

  mae = point_mae.PointMAE(dim=16, depth=2, num_heads=2, out_blocks=(0, 1))
  variables = jax.jit(mae.init)(jax.random.key(1), np.zeros((1, 2, 4, 3), np.float32), np.zeros((1, 2, 3), np.float32))
  point = backbones.PointMaeBackbone(variables, num_group=16, group_size=8, mesh=mesh, model=mae,
                                     bucket_sizes=(256, 1024, 2304))
  info, cache = exporting._point_info(point), {}
  programs = {}
  for size in point.bucket_sizes:
    spec = exporting._export(tmp_path, f'point_{size}', exporting.point_program(point, mesh), point.variables,
                             [jax.ShapeDtypeStruct((b, 2), jnp.uint32),
                              jax.ShapeDtypeStruct((b, size, 3), jnp.float32),
                              jax.ShapeDtypeStruct((b, size), jnp.bool_),
                              jax.ShapeDtypeStruct((b, 48 * 48), jnp.int32)], PLATFORMS, 'point')
    programs[size] = bundle.Program(tmp_path, _listing(tmp_path), spec, cache)
  exported = bundle.PointMaeProgram(programs, info)
  assert programs[256].arrays is programs[2304].arrays  # one copy of the weights
  clouds = _clouds(3)
  for picked in ([0], [1], [0, 1, 2]):  # buckets 256, 1024 and 1024 for the three
    assert np.array_equal(np.asarray(exported(clouds[picked])), np.asarray(point(clouds[picked]))), picked
  for name in ('rgb', 'point_256', 'point_2304'):
    program = jax.export.deserialize(bytearray((tmp_path / 'programs' / f'{name}.jax').read_bytes()))
    assert program.platforms == PLATFORMS and program.nr_devices == 1


def test_stochastic_drop_path_is_not_exported():
  mae = point_mae.PointMAE(dim=16, depth=2, num_heads=2, out_blocks=(0, 1), drop_path='stochastic')
  variables = jax.jit(mae.init)(jax.random.key(1), np.zeros((1, 2, 4, 3), np.float32), np.zeros((1, 2, 3), np.float32))
  point = backbones.PointMaeBackbone(variables, num_group=16, group_size=8, model=mae, drop_path='stochastic')
  with pytest.raises(ConfigError, match="point_mae.drop_path = 'stochastic': a bundle scores deterministically"):
    exporting._point_info(point)
