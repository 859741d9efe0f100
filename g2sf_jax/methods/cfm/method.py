"""CFM (Costanzino et al., CVPR 2024) as a method: crossmodal feature mapping, no memory bank.

Stage `cfm/train` (per class): the two mapping networks on the class's training pixels (`train.py`). The scorer
maps each test sample's features across modalities and scores the disagreement (`infer.py`): row `CFM`. It needs
both modalities (it maps one onto the other) and asks for the point features pooled to 224×224 (`pcd224`), which
the caller computes from the clouds since the shared extract stage stores only the 56×56 ones (`features.py`).

Reference behaviour kept as switches in `config.cfm` (the official CVLAB-Unibo code is the default): distance
'euclid' (the code's distance between normalised vectors) | 'cosine'; normalisation 'reference' (the code's
three per-image normalisations) | 'none'. Not kept: the official extractor stays in PyTorch train mode (stochastic
DropPath); here the backbones are deterministic, as everywhere in g2sf-jax (`point_mae.drop_path`).
"""
import jax.numpy as jnp
import ml_collections
import numpy as np

from g2sf_jax import checkpoints
from g2sf_jax.config_fields import choice, number
from g2sf_jax.errors import ConfigError
from g2sf_jax.methods import base
from g2sf_jax.methods.cfm import features as cfm_features
from g2sf_jax.methods.cfm import infer
from g2sf_jax.methods.cfm import train as cfm_train
from g2sf_jax.ops import resize


def train_networks(ctx: base.StageContext) -> dict:
  c = ctx.config
  _, point = ctx.backbones()
  img = ctx.features('train')['img']
  samples = ctx.samples('train')
  n = len(samples)
  point_dim = point.dim

  def point_batch(idx) -> np.ndarray:
    return cfm_features.point_rows(point, np.stack([samples[int(i)]['xyz'] for i in idx]))

  size_gb = n * cfm_features.SIZE ** 2 * point_dim * 4 / 1e9
  cached = None
  if size_gb <= c.cfm.cache_gb:  # a small training set: its 224² point features once, in memory
    cached = np.concatenate([point_batch(range(s, min(s + c.batch_size, n))) for s in range(0, n, c.batch_size)])
  else:
    ctx.log('cfm/train %s: the 224² point features of %d samples (%.1f GB) exceed cfm.cache_gb=%.1f; recomputing '
            'them every epoch', ctx.class_name, n, size_gb, c.cfm.cache_gb)

  def batch_rows(idx: np.ndarray):
    pcd = cached[idx] if cached is not None else point_batch(idx)
    return cfm_features.rgb_rows(img[idx]), pcd, cfm_features.background(pcd)

  params = cfm_train.train(c, n, batch_rows, img.shape[-1], point_dim, ctx.out_dir, ctx.key('cfm'), mesh=ctx.mesh,
                           log=lambda msg: ctx.log('cfm/train %s: %s', ctx.class_name, msg))
  checkpoints.save(ctx.out_dir / 'networks', params, {'rgb_dim': int(img.shape[-1]), 'point_dim': int(point_dim)})
  return {'samples': n, 'cached_point_features': cached is not None}


class CfmScorer(base.Scorer):
  """Row CFM: each modality's features mapped onto the other's, the disagreement per pixel (App. C). Its point
  features are the 224² ones (`pcd224`), which the caller computes from the clouds with the point backbone."""
  rows = ('CFM',)
  needs = ('img', 'pcd224')

  def __init__(self, params: dict, config: ml_collections.ConfigDict):
    self.arrays = params
    self.distance, self.normalisation = config.cfm.distance, config.cfm.normalisation

  def apply(self, arrays, feats):
    img = feats['img']
    rgb = resize.bilinear(img, cfm_features.SIZE).reshape(img.shape[0], cfm_features.SIZE ** 2, -1)
    pcd = feats['pcd224'].reshape(img.shape[0], cfm_features.SIZE ** 2, -1)
    smoothed = infer.raw_maps(arrays, rgb, pcd, jnp.sum(pcd, axis=-1) == 0, distance=self.distance)
    image, pixel, pro = infer.scores(smoothed, self.normalisation)
    return {'CFM': {'image': image, 'maps': pixel, 'pro_maps': pro}}


class Cfm(base.Method):
  name = 'cfm'
  aupro_thresholds = 99  # the official `calculate_au_pro` default
  scoring_keys = ('cfm.distance', 'cfm.normalisation')

  def rows(self, config: ml_collections.ConfigDict) -> tuple[str, ...]:
    return ('CFM',)

  def check(self, config: ml_collections.ConfigDict) -> None:
    if base.modalities(config) != ('rgb', 'xyz'):
      raise ConfigError(f"config.method='cfm' maps each modality onto the other: it needs "
                        f"config.modalities='rgb+xyz', got {config.modalities!r}")
    choice(config, 'cfm.distance', ('euclid', 'cosine'))
    choice(config, 'cfm.normalisation', ('reference', 'none'))
    for field in ('cfm.epochs', 'cfm.batch_size'):
      number(config, field, 1, integer=True)
    number(config, 'cfm.lr', 0, low_open=True)
    number(config, 'cfm.cache_gb', 0)

  def stages(self, config: ml_collections.ConfigDict) -> tuple[base.Stage, ...]:
    return (base.Stage('train', train_networks, owner=self.name, deps=('extract',),
                       keys=('cfm.epochs', 'cfm.batch_size', 'cfm.lr', 'seed')),)

  def scorer(self, ctx: base.ScorerContext) -> CfmScorer:
    params, _ = checkpoints.load(ctx.dir('cfm/train') / 'networks', how_to_make='experiments.run --config cfm '
                                                                                '--config.stages=train')
    return CfmScorer(params, ctx.config)
