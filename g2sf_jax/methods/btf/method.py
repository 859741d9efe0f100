"""BTF ("Back to the Feature", Horwitz & Hoshen): PatchCore on concatenated RGB + point patch features.

Stage `banks`: the two halves of the joint train feature are standardised by their train banks' scalar mean/std
(so neither modality dominates the distance; the original concatenates raw features), then one coreset of the
joint rows. The scorer is PatchCore's (algorithms.md §3.3) on the joint features: row `BTF`.
"""
from typing import Mapping

import jax.numpy as jnp
import ml_collections
import numpy as np

from g2sf_jax import features, memory_bank
from g2sf_jax.errors import ConfigError
from g2sf_jax.methods import base
from g2sf_jax.methods.patchcore import method as patchcore
from g2sf_jax.ops import exact

BANK_CHECKPOINT = 'coresets'
SEARCH_K = 20  # neighbours ranked per patch, as in the unimodal rows' search (only the nearest is used)


def joint_rows(img: np.ndarray, pcd: np.ndarray, stats: Mapping[str, tuple[float, float]]) -> np.ndarray:
  """img [N, h, w, Cr], pcd [N, 56, 56, Cp] → standardised joint rows [N·3136, Cr+Cp] (RGB first)."""
  (mi, si), (mp, sp) = stats['img'], stats['pcd']
  joint = features.joint_features((features.to_grid(img) - mi) / si, (pcd - mp) / sp)
  return joint.reshape(-1, joint.shape[-1])


def build_bank(ctx: base.StageContext) -> dict:
  feats = ctx.features('train')
  stats = {}
  for name in ('img', 'pcd'):
    fitted = memory_bank.Normaliser.fit(feats[name].reshape(-1, feats[name].shape[-1]))
    stats[name] = (fitted.mean, fitted.std)
  joint = patchcore.coreset_bank(ctx, 'joint', joint_rows(feats.pop('img'), feats.pop('pcd'), stats),
                                 normalise=False)
  memory_bank.save(ctx.out_dir / BANK_CHECKPOINT, {'joint': joint}, {'btf_stats': stats, 'class': ctx.class_name})
  return {'joint': list(joint.coreset.shape)}


class BtfScorer(base.Scorer):
  """Row BTF: PatchCore on the standardised joint features (algorithms.md §3.3)."""
  rows = ('BTF',)
  needs = ('img', 'pcd')

  def __init__(self, bank: memory_bank.ModalityBank, stats: Mapping[str, tuple[float, float]], mesh, blur: str):
    placed = memory_bank.place_bank(bank.coreset, mesh)
    self.mesh, self.blur, self.dim, self.num_rows = mesh, blur, placed.dim, placed.num_rows
    self.arrays = {'rows': placed.rows, 'stats': {k: np.asarray(v, np.float32) for k, v in stats.items()}}

  def apply(self, arrays, feats):
    scaled = {}
    for name in ('img', 'pcd'):
      mean, std = arrays['stats'][name][0], arrays['stats'][name][1]
      scaled[name] = exact.divide(jnp.asarray(feats[name], jnp.float32) - mean, std)
    img = scaled['img']
    if img.shape[1] != features.GRID:
      img = jnp.repeat(jnp.repeat(img, 2, axis=1), 2, axis=2)
    joint = jnp.concatenate([img, scaled['pcd']], axis=-1)
    joint = joint.reshape(joint.shape[0], features.GRID * features.GRID, -1)
    res = memory_bank.patchcore(joint, arrays['rows'], dim=self.dim, num_rows=self.num_rows, mesh=self.mesh,
                                k=SEARCH_K, blur=self.blur)
    return {'BTF': {'image': res['image'], 'maps': res['maps']}}


class Btf(base.Method):
  name = 'btf'

  def rows(self, config: ml_collections.ConfigDict) -> tuple[str, ...]:
    return ('BTF',)

  def check(self, config: ml_collections.ConfigDict) -> None:
    if base.modalities(config) != ('rgb', 'xyz'):
      raise ConfigError(f"config.method='btf' needs config.modalities='rgb+xyz', got {config.modalities!r}")

  def stages(self, config: ml_collections.ConfigDict) -> tuple[base.Stage, ...]:
    return (base.Stage('banks', build_bank, owner=self.name, deps=('extract',), keys=('memory_bank', 'seed'),
                       exclude=('memory_bank.num_anchors',)),)

  def scorer(self, ctx: base.ScorerContext) -> BtfScorer:
    banks, meta = memory_bank.load(ctx.dir('btf/banks') / BANK_CHECKPOINT,
                                   how_to_make=f'experiments.run --config btf --config.classes={ctx.class_name} '
                                               '--config.stages=banks')
    stats = {k: tuple(v) for k, v in meta['btf_stats'].items()}
    return BtfScorer(banks['joint'], stats, ctx.mesh, ctx.config.scoring.blur)
