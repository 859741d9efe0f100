"""G²SF as a method: PatchCore's banks → synthetic fusion data → LSPN training → the FUS row (algorithms.md §4).

Stages: `patchcore/banks` (shared with the plain rows), `g2sf/fusion_data` (algorithms.md §4.2–4.3) and `g2sf/train`
(algorithms.md §4.5). Rows: IMG, PCD and FUS; with one modality only there is nothing to fuse and the method reduces to
that modality's PatchCore row. The scorer reuses the anchors of the IMG/PCD search for FUS (algorithms.md §4.6).
"""
import dataclasses
import functools
import json
import zlib
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from g2sf_jax import data, features, io, memory_bank, parallel
from g2sf_jax.data import prepared, transforms
from g2sf_jax.config_fields import choice, number
from g2sf_jax.errors import ConfigError, DataError
from g2sf_jax.methods import base
from g2sf_jax.methods.patchcore import method as patchcore
from g2sf_jax.methods.g2sf import dataset as fusion_dataset
from g2sf_jax.methods.g2sf import infer, losses, lspn
from g2sf_jax.methods.g2sf import train as fusion_train

BANKS = 'patchcore/banks'


def _anomaly_sources(ctx: base.StageContext) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
  """algorithms.md §4.2: `synthesis.num_sources` preprocessed training clouds per class, pooled over the stage's classes
  (`synthesis.source_classes`, or the run's: the reference pools every class of the dataset).

  Returns the source names ('class/split/…') and where each lies (class, row of its whole prepared training split,
  also under `train.max_samples`); the list is
  saved in the stage's folder. A cloud with too few valid points is passed over (the next in the seeded order is
  taken).
  """
  from g2sf_jax.methods.g2sf import synthesis  # albumentations and torch: only this stage needs them
  c = ctx.config
  splits = {name: ctx.samples('train', full=True, class_name=name) for name in ctx.classes}
  names = {name: [f'{name}/{s}' for s in _names(split)] for name, split in splits.items()}
  where = {n: (name, i) for name, ns in names.items() for i, n in enumerate(ns)}

  def load_name(n: str) -> np.ndarray:
    name, row = where[n]
    return splits[name][row]['xyz']

  count = min([c.synthesis.num_sources] + [len(v) for v in names.values()])
  sources = synthesis.select_anomaly_sources(names, count, c.seed,
                                             usable=lambda n: synthesis.can_host_anomaly(load_name(n)))
  with io.atomic_write(ctx.out_dir / 'anomaly_sources.json', 'w') as f:
    json.dump(sources, f, indent=1)
  rows = tuple((where[n][0], prepared.row_of(splits[where[n][0]], where[n][1])) for n in sources)
  return tuple(sources), rows


def _names(split: Sequence[dict]) -> list[str]:
  return [s['name'] for s in split]


def _hosts(ctx: base.StageContext, train_full: Sequence[dict]) -> tuple[int, ...]:
  """The training samples that can receive (and donate) an anomaly; the others are named in the log."""
  from g2sf_jax.methods.g2sf import synthesis
  keep, left_out = [], []
  for i, sample in enumerate(train_full):
    (keep if synthesis.can_host_anomaly(sample['xyz']) else left_out).append(i)
  if left_out:
    ctx.log('fusion_data %s: %d training clouds have too few valid points to host a synthetic anomaly and are left '
            'out of the synthesis: %s', ctx.class_name, len(left_out),
            ', '.join(train_full[i]['name'] for i in left_out))
  if len(keep) < 2:
    raise DataError(f'class {ctx.class_name!r}: {len(keep)} of {len(train_full)} training clouds have enough valid '
                    'points for anomaly synthesis (2 needed: a normal sample and a donor)')
  return tuple(keep)


@dataclasses.dataclass(frozen=True)
class _SynthesisPlan:
  """What one synthetic anomaly of a class is made from, as plain data so that a worker process can open the
  prepared splits itself (`g2sf_jax.parallel`): each anomaly is a function of (plan, index) alone."""
  dataset: str
  data_dirs: tuple[tuple[str, str], ...]   # (class, its prepared data): the host class and the sources' classes
  class_name: str
  hosts: tuple[int, ...]                   # rows of the class's whole training split that may host and donate
  sources: tuple[str, ...]                 # anomaly-source names ('class/split/…')
  source_rows: tuple[tuple[str, int], ...]  # (class, training row) of each source
  profile: str
  seed: int


@functools.lru_cache(maxsize=4)
def _opened(plan: _SynthesisPlan):
  """The hosts and a source loader of `plan`, opened once per process."""
  data_dirs = dict(plan.data_dirs)
  split = lambda name: prepared.load_split_full(plan.dataset, data_dirs[name], name, 'train')
  train = split(plan.class_name)
  source_splits = {name: split(name) for name, _ in plan.source_rows}

  def load_source(i: int) -> np.ndarray:
    name, row = plan.source_rows[i]
    return source_splits[name][row]['xyz']

  return prepared.Subset(train, plan.hosts), load_source


def _synthesize(plan: _SynthesisPlan, index: int) -> dict:
  """Synthetic anomaly `index` of `plan` → its model input (algorithms.md §4.2.8 resizing)."""
  from g2sf_jax.methods.g2sf import synthesis
  hosts, load_source = _opened(plan)
  made = synthesis.synthesize_indexed(hosts, load_source, plan.sources, plan.class_name, plan.profile, plan.seed,
                                      index)
  return transforms.model_input(made, mask_rgb_by_xyz=False)


def _placed_coresets(ctx: base.ScorerContext, banks: Mapping[str, memory_bank.ModalityBank]):
  return tuple(memory_bank.place_bank(banks[m].coreset, ctx.mesh) for m in ('img', 'pcd'))


def build_fusion_data(ctx: base.StageContext) -> dict:
  """algorithms.md §4.2–4.3: `synthesis.num_anomalies` synthetic anomalies → their foreground patch rows."""
  c = ctx.config
  banks = patchcore.load_banks(ctx)
  train_full = ctx.samples('train', full=True)
  hosts = tuple(prepared.row_of(train_full, i) for i in _hosts(ctx, train_full))
  sources, source_rows = _anomaly_sources(ctx)
  data_dirs = tuple((name, str(ctx.data_dir(name))) for name in dict.fromkeys([ctx.class_name, *ctx.classes]))
  plan = _SynthesisPlan(c.dataset, data_dirs, ctx.class_name, hosts, sources,
                        source_rows, data.get(c.dataset).synthesis, zlib.crc32(f'{c.seed}/{ctx.class_name}'.encode()))
  rgb, point = ctx.backbones()
  bar = ctx.progress(c.synthesis.num_anomalies, f'{ctx.class_name} fusion data')

  with parallel.Workers(min(parallel.resolve(c.workers), c.batch_size)) as pool:
    def make_chunk(indices: np.ndarray) -> dict[str, np.ndarray]:
      """Synthetic samples (seed, i), made in the worker processes → normalised IMG and raw PCD features."""
      inputs = list(pool.map(functools.partial(_synthesize, plan), [int(i) for i in indices]))
      feats = features.extract(rgb, point, inputs, c.batch_size)
      bar.update(len(indices))
      return {'img': banks['img'].normaliser(feats['img']), 'pcd': feats['pcd'],
              'mask': np.stack([x['mask'] for x in inputs])}

    fused = fusion_dataset.build(ctx.out_dir, c.synthesis.num_anomalies, make_chunk, _placed_coresets(ctx, banks),
                                 chunk_size=c.batch_size, num_anchors=c.memory_bank.num_anchors)
  bar.close()
  info = {'rows': int(len(fused.label)), 'anomalous': int(np.sum(fused.label))}
  ctx.log('fusion_data %s: %d patches, %d anomalous', ctx.class_name, info['rows'], info['anomalous'])
  return info


def train_fuser(ctx: base.StageContext) -> dict:
  """algorithms.md §4.5: the LSPN and θ on the class's fusion data; the best epoch is kept in `best/`."""
  c = ctx.config
  banks = patchcore.load_banks(ctx)
  fused = fusion_dataset.load(ctx.dir('g2sf/fusion_data'))
  bar = ctx.progress(c.g2sf.epochs, f'{ctx.class_name} LSPN', unit='epoch')

  def on_epoch_end(epoch: int, metrics: dict) -> None:
    bar.n = epoch + 1
    bar.set_postfix({k: f'{v:.3g}' for k, v in metrics.items() if k in ('loss', 'val', 'val_auroc')})
    ctx.log('train %s epoch %d: %s', ctx.class_name, epoch,
            json.dumps({k: round(float(v), 5) for k, v in metrics.items()}))

  state = fusion_train.train(c, fused, (banks['img'].coreset, banks['pcd'].coreset), ctx.out_dir,
                             ctx.key('train'), mesh=ctx.mesh, on_epoch_end=on_epoch_end)
  bar.close()
  return {'best_epoch': state.epoch, 'best_val': state.best_val, 'mu': np.asarray(state.mu).tolist()}


class G2sfScorer(base.Scorer):
  """IMG and PCD (PatchCore) and FUS from the same nearest-neighbour search (algorithms.md §4.6)."""
  rows = ('IMG', 'PCD', 'FUS')
  needs = ('img', 'pcd')

  def __init__(self, unimodal: patchcore.PatchCoreScorer, fuser: fusion_train.FusionState,
               config: ml_collections.ConfigDict):
    self.unimodal = unimodal
    self.model = lspn.from_config(config.g2sf)
    self.mode = config.g2sf.scoring_mode
    self.blur = config.scoring.blur
    self.k = config.g2sf.anchor + 1
    if unimodal.num_anchors < self.k:
      raise ValueError(f'G²SF needs the {self.k} nearest prototypes per modality (g2sf.anchor + 1), the search '
                       f'keeps {unimodal.num_anchors}; raise memory_bank.num_anchors')
    self.arrays = {'banks': unimodal.arrays, 'lspn': fuser.lspn_params, 'theta': np.asarray(fuser.theta),
                   'mu': np.asarray(fuser.mu)}

  def apply(self, arrays, feats):
    found = self.unimodal.search(arrays['banks'], feats)
    out = {row: {'image': found[name][1]['image'], 'maps': found[name][1]['maps']}
           for name, row in (('img', 'IMG'), ('pcd', 'PCD'))}
    protos = [arrays['banks'][name]['rows'][found[name][1]['anchors'][..., :self.k], :self.unimodal.shapes[name][0]]
              for name in ('img', 'pcd')]  # each patch's k nearest prototypes per modality, paired by rank

    def one(sample):
      img, pcd, protos_img, protos_pcd = sample
      patch = infer.fused_patch_scores(self.model, self.mode, arrays['lspn'], arrays['theta'], arrays['mu'], img,
                                       pcd, protos_img, protos_pcd)
      return jnp.max(patch), memory_bank.pixel_map(patch, self.blur)

    image, maps = jax.lax.map(one, (found['img'][0], found['pcd'][0], *protos))
    out['FUS'] = {'image': image, 'maps': maps}
    return out


class G2sf(base.Method):
  name = 'g2sf'
  scoring_keys = ('g2sf.scoring_mode',)

  def rows(self, config: ml_collections.ConfigDict) -> tuple[str, ...]:
    unimodal = patchcore.PatchCore().rows(config)
    return unimodal + (('FUS',) if len(unimodal) == 2 else ())

  def check(self, config: ml_collections.ConfigDict) -> None:
    choice(config, 'g2sf.scoring_mode', infer.SCORING_MODES)
    choice(config, 'g2sf.consistency', losses.CONSISTENCY_MODES)
    for field in ('g2sf.hidden', 'g2sf.emb_dim', 'g2sf.anchor', 'g2sf.epochs', 'synthesis.num_anomalies',
                  'synthesis.num_sources'):
      number(config, field, 1, integer=True)
    number(config, 'g2sf.batch_size', 2, integer=True)
    number(config, 'g2sf.dropout', 0, 1, high_open=True)
    for field in ('g2sf.lr', 'g2sf.lr_scale'):
      number(config, field, 0, low_open=True)
    for field in ('g2sf.weight_decay', 'g2sf.alpha', 'g2sf.magnitude', 'g2sf.w_margin', 'g2sf.w_consistency',
                  'g2sf.w_alignment', 'g2sf.w_scaling', 'g2sf.w_l1'):
      number(config, field, 0)
    if 2 * config.g2sf.anchor + 1 > config.memory_bank.num_anchors:
      raise ConfigError(f'config.memory_bank.num_anchors={config.memory_bank.num_anchors} is below the '
                       f'{2 * config.g2sf.anchor + 1} prototypes G²SF trains with (2·g2sf.anchor + 1)')

  def _fuses(self, config: ml_collections.ConfigDict) -> bool:
    return 'FUS' in self.rows(config)

  def stages(self, config: ml_collections.ConfigDict) -> tuple[base.Stage, ...]:
    stages = (patchcore.banks_stage(),)
    if not self._fuses(config):
      return stages
    return stages + (
        base.Stage('fusion_data', build_fusion_data, owner=self.name, deps=('extract', BANKS),
                   keys=('synthesis', 'seed', 'memory_bank.num_anchors'), pool='synthesis.source_classes'),
        base.Stage('train', train_fuser, owner=self.name, deps=(f'{self.name}/fusion_data', BANKS),
                   keys=('g2sf', 'seed'), exclude=('g2sf.scoring_mode',)),
    )

  def scorer(self, ctx: base.ScorerContext):
    unimodal = patchcore.PatchCore().scorer(ctx)
    if not self._fuses(ctx.config):
      return unimodal
    fuser = fusion_train.load(ctx.dir('g2sf/train') / 'best')
    return G2sfScorer(unimodal, fuser, ctx.config)
