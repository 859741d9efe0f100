"""M3DM (Wang et al., CVPR 2023) as a method: UFF → three memory banks → Decision Layer Fusion.

Stages:
  m3dm/uff     (dataset scope) the Unsupervised Feature Fusion, trained on every class's training patches jointly
  m3dm/banks   point (56×56), RGB (28×28) and fused (56×56, UFF features) banks with their coresets
  m3dm/dlf     the two one-class SVMs, fitted on the training samples' scores against those banks
Rows: IMG and PCD (M3DM's own RGB and point banks, PatchCore scoring) and M3DM (the hybrid fusion). With one
modality there is nothing to fuse: the method reduces to that modality's PatchCore row (as G²SF does).

Reference behaviour kept, each a switch in `config.m3dm` (the official code nomewang/M3DM is the default):
  normalisation 'reference': every bank and test patch scaled by one mean (the raw point bank's) and one std (the
    raw RGB bank's), as `run_coreset` does | 'per_bank'.
  coreset_sizes 'reference': the RGB and fused coresets get `coreset_fraction` × the *point coreset's* size (≈1%
    of their banks), the point coreset drops rows with an exact zero and gains an all-zero row | 'per_bank'.
  uff_pairing 'reference' (scrambled training pairs, `uff.py`) | 'aligned'; uff_keep 'reference' (patches whose
  point feature has no exact zero) | 'foreground' (not all zero: FPFH histograms have empty bins). lambdas: the DLF
  input weights
  (1, 0.1, 1 for point, RGB, fused). Re-weighting without the ε of the single-bank code; maps bilinear to 224 then
  the reference blur (`scoring.blur`).
"""
import jax.numpy as jnp
import ml_collections
import numpy as np

from g2sf_jax import checkpoints, features, memory_bank
from g2sf_jax.config_fields import choice, number, numbers_list
from g2sf_jax.errors import ConfigError, require_finite
from g2sf_jax.methods import base
from g2sf_jax.methods.patchcore import method as patchcore
from g2sf_jax.ops import exact
from g2sf_jax.methods.m3dm import dlf, uff

BANKS = ('xyz', 'rgb', 'fused')  # the order of the DLF columns
ROWS = {'xyz': 'PCD', 'rgb': 'IMG'}
BANK_CHECKPOINT = 'coresets'


def train_uff(ctx: base.StageContext) -> dict:
  c = ctx.config
  meta = uff.pack(ctx.out_dir, ctx.classes, lambda name: ctx.features('train', class_name=name), c.m3dm.uff_pairing,
                  c.m3dm.uff_keep)
  ctx.log('m3dm/uff: %d training samples of %d classes, %d kept patches', meta['samples'], len(ctx.classes),
          meta['rows'])
  rows = np.load(ctx.out_dir / 'rows.npy', mmap_mode='r')
  with np.load(ctx.out_dir / 'offsets.npz') as z:
    offsets = z['offsets']
  params = uff.train(c, rows, offsets, meta['point_dim'], ctx.out_dir, ctx.key('uff'), mesh=ctx.mesh,
                     log=lambda msg: ctx.log('%s', msg))
  checkpoints.save(ctx.out_dir / 'uff', params, meta)
  del rows
  (ctx.out_dir / 'rows.npy').unlink()  # the packed rows (tens of GB at MVTec size) only served the training
  return meta


def load_uff(ctx: base.ScorerContext):
  params, _ = checkpoints.load(ctx.dir('m3dm/uff') / 'uff', how_to_make='experiments.run --config m3dm '
                                                                        '--config.stages=uff')
  return params


def _bank_rows(feats: dict, params) -> dict[str, np.ndarray]:
  """Raw rows of each bank: point [N·3136, Dp], RGB [N·h·w, Dr] (its own grid), fused [N·3136, Dp + Dr]."""
  img, pcd = feats['img'], feats['pcd']
  return {'xyz': pcd.reshape(-1, pcd.shape[-1]), 'rgb': img.reshape(-1, img.shape[-1]),
          'fused': uff.fuse(params, img, pcd).reshape(-1, pcd.shape[-1] + img.shape[-1])}


def build_banks(ctx: base.StageContext) -> dict:
  c, m = ctx.config, ctx.config.m3dm
  rows = _bank_rows(ctx.features('train'), load_uff(ctx))
  if m.normalisation == 'reference':
    shared = memory_bank.Normaliser(memory_bank.Normaliser.fit(rows['xyz']).mean,
                                    memory_bank.Normaliser.fit(rows['rgb']).std)
    normalisers = dict.fromkeys(BANKS, shared)
  else:
    normalisers = {name: memory_bank.Normaliser.fit(r) for name, r in rows.items()}
  fraction = c.memory_bank.coreset_fraction
  sizes = {name: memory_bank.coreset_size(len(r), fraction) for name, r in rows.items()}
  if m.coreset_sizes == 'reference':  # `n = int(0.1 * patch_xyz_lib.shape[0])` after the point coreset
    sizes['rgb'] = sizes['fused'] = min(memory_bank.coreset_size(sizes['xyz'], fraction), len(rows['rgb']))
  banks = {}
  for name in BANKS:
    banks[name] = patchcore.coreset_bank(ctx, name, rows.pop(name), normalise=False, normaliser=normalisers[name],
                                         size=sizes[name])
  if m.coreset_sizes == 'reference':
    xyz = banks['xyz']
    keep = np.all(xyz.coreset != 0, axis=1)
    banks['xyz'] = memory_bank.ModalityBank(
        np.concatenate([xyz.coreset[keep], np.zeros((1, xyz.coreset.shape[1]), np.float32)]),
        np.concatenate([xyz.coreset_idx[keep], [-1]]).astype(np.int32), xyz.normaliser)
  memory_bank.save(ctx.out_dir / BANK_CHECKPOINT, banks, {'class': ctx.class_name})
  return {name: list(b.coreset.shape) for name, b in banks.items()}


class BankScorer(base.Scorer):
  """The three banks' PatchCore results (algorithms.md §3.3 with M3DM's re-weighting, no ε), rows named after the
  banks (`BANKS`): what the DLF is fitted on and combines."""
  rows = BANKS
  needs = ('img', 'pcd')

  def __init__(self, banks: dict[str, memory_bank.ModalityBank], uff_params, config: ml_collections.ConfigDict,
               mesh):
    self.mesh, self.blur = mesh, config.scoring.blur
    self.lambdas = np.asarray(config.m3dm.lambdas, np.float32)
    placed = {name: memory_bank.place_bank(b.coreset, mesh) for name, b in banks.items()}
    self.shapes = {name: (p.dim, p.num_rows) for name, p in placed.items()}
    self.arrays = {'uff': uff_params,
                   'banks': {name: {'rows': p.rows, 'mean': np.float32(banks[name].normaliser.mean),
                                    'std': np.float32(banks[name].normaliser.std)} for name, p in placed.items()}}

  def apply(self, arrays, feats):
    img, pcd = jnp.asarray(feats['img'], jnp.float32), jnp.asarray(feats['pcd'], jnp.float32)
    n = pcd.shape[0]
    img56 = img if img.shape[1] == features.GRID else jnp.repeat(jnp.repeat(img, 2, axis=1), 2, axis=2)
    fused = uff.fuse_rows(arrays['uff'], img56.reshape(-1, img.shape[-1]), pcd.reshape(-1, pcd.shape[-1]))
    raw = {'xyz': pcd.reshape(n, -1, pcd.shape[-1]), 'rgb': img.reshape(n, -1, img.shape[-1]),
           'fused': fused.reshape(n, features.GRID * features.GRID, -1)}
    out = {}
    for name in BANKS:
      bank = arrays['banks'][name]
      x = exact.divide(raw[name] - bank['mean'], bank['std'])
      dim, num_rows = self.shapes[name]
      res = memory_bank.patchcore(x, bank['rows'], dim=dim, num_rows=num_rows, mesh=self.mesh, k=1, blur=self.blur,
                                  reweight_eps=0.0)
      out[name] = {'image': res['image'], 'maps': res['maps']}
    return out

  def dlf_inputs(self, results: dict) -> tuple[np.ndarray, np.ndarray]:
    """`([B, 3] image scores, [B·224·224, 3] pixel scores)`, columns point, RGB, fused, weighted by lambdas."""
    s = np.stack([results[name].image for name in BANKS], 1) * self.lambdas
    maps = np.stack([results[name].maps for name in BANKS], -1) * self.lambdas
    return s, maps.reshape(-1, len(BANKS))


class M3dmScorer(base.Scorer):
  """Rows IMG and PCD (M3DM's own banks) and M3DM: the two one-class SVMs on the three banks' scores."""
  rows = ('IMG', 'PCD', 'M3DM')
  needs = ('img', 'pcd')

  def __init__(self, banks: BankScorer, detect: dlf.LinearOneClass, segment: dlf.LinearOneClass):
    self.banks = banks
    self.arrays = {'banks': banks.arrays, 'lambdas': banks.lambdas,
                   'detect': {'coef': detect.coef.astype(np.float32), 'offset': detect.offset.astype(np.float32)},
                   'segment': {'coef': segment.coef.astype(np.float32), 'offset': segment.offset.astype(np.float32)}}

  def apply(self, arrays, feats):
    found = self.banks.apply(arrays['banks'], feats)
    out = {ROWS[name]: found[name] for name in ('rgb', 'xyz')}
    s = jnp.stack([found[name]['image'] for name in BANKS], 1) * arrays['lambdas']
    maps = jnp.stack([found[name]['maps'] for name in BANKS], -1) * arrays['lambdas']
    out['M3DM'] = {'image': dlf.linear_score(arrays['detect'], s),
                   'maps': dlf.linear_score(arrays['segment'], maps.reshape(-1, len(BANKS))).reshape(maps.shape[:-1])}
    return out


def _bank_scorer(ctx: base.ScorerContext) -> BankScorer:
  banks, _ = memory_bank.load(ctx.dir('m3dm/banks') / BANK_CHECKPOINT,
                              how_to_make='experiments.run --config m3dm --config.stages=banks')
  return BankScorer(banks, load_uff(ctx), ctx.config, ctx.mesh)


def fit_dlf(ctx: base.StageContext) -> dict:
  """The two SGDOneClassSVMs on the training samples' DLF inputs (scored against the finished banks)."""
  c = ctx.config
  scorer = _bank_scorer(ctx)
  feats = ctx.features('train')
  s_parts, map_parts = [], []
  for start in range(0, len(feats['pcd']), c.batch_size):
    s, maps = scorer.dlf_inputs(scorer({k: v[start:start + c.batch_size] for k, v in feats.items()}))
    s_parts.append(s)
    map_parts.append(maps)
  s, maps = np.concatenate(s_parts), np.concatenate(map_parts)
  require_finite('the DLF inputs (the training samples\' scores against the banks)', s, maps)
  ctx.log('m3dm/dlf %s: fitting on %d image score rows and %d pixel rows', ctx.class_name, len(s), len(maps))
  detect = dlf.fit(s, c.m3dm.ocsvm_nu, c.m3dm.ocsvm_max_iter)
  segment = dlf.fit(maps, c.m3dm.ocsvm_nu, c.m3dm.ocsvm_max_iter)
  dlf.save(ctx.out_dir / 'dlf.npz', detect, segment)
  return {'detect_coef': detect.coef.ravel().tolist(), 'segment_coef': segment.coef.ravel().tolist()}


class M3dm(base.Method):
  name = 'm3dm'
  scoring_keys = ('m3dm.lambdas',)

  def rows(self, config: ml_collections.ConfigDict) -> tuple[str, ...]:
    unimodal = patchcore.PatchCore().rows(config)
    return unimodal + (('M3DM',) if len(unimodal) == 2 else ())

  def _fuses(self, config) -> bool:
    return len(base.modalities(config)) == 2

  def check(self, config: ml_collections.ConfigDict) -> None:
    m = config.m3dm
    choice(config, 'm3dm.normalisation', ('reference', 'per_bank'))
    choice(config, 'm3dm.coreset_sizes', ('reference', 'per_bank'))
    choice(config, 'm3dm.uff_pairing', ('reference', 'aligned'))
    choice(config, 'm3dm.uff_keep', ('reference', 'foreground'))
    if self._fuses(config) and config.point_backbone == 'fpfh' and m.uff_keep == 'reference':
      raise ConfigError("config.m3dm.uff_keep = 'reference' keeps only patches whose point feature has no zero, and "
                        "FPFH histograms always have empty bins: use --config.m3dm.uff_keep=foreground")
    choice(config, 'm3dm.uff.schedule', ('paper', 'code'))
    number(config, 'm3dm.ocsvm_nu', 0, 1, low_open=True)
    for field in ('m3dm.ocsvm_max_iter', 'm3dm.uff.steps', 'm3dm.uff.epochs', 'm3dm.uff.batch_size',
                  'm3dm.uff.accum'):
      number(config, field, 1, integer=True)
    for field in ('m3dm.uff.warmup_steps', 'm3dm.uff.warmup_epochs'):
      number(config, field, 0, integer=True)
    number(config, 'm3dm.uff.lr', 0, low_open=True)
    number(config, 'm3dm.uff.weight_decay', 0)
    number(config, 'm3dm.uff.temperature', 0, low_open=True)
    numbers_list(config, 'm3dm.lambdas', 3, low=0)  # the DLF input weights: point, RGB, fused
    numbers_list(config, 'm3dm.uff.betas', 2, low=0, high=1)

  def stages(self, config: ml_collections.ConfigDict) -> tuple[base.Stage, ...]:
    if not self._fuses(config):
      return (patchcore.banks_stage(),)
    return (
        base.Stage('uff', train_uff, owner=self.name, deps=('extract',), scope='dataset',
                   keys=('m3dm.uff', 'm3dm.uff_pairing', 'm3dm.uff_keep', 'seed'),
                   pool='m3dm.uff_classes'),
        base.Stage('banks', build_banks, owner=self.name, deps=('extract', 'm3dm/uff'),
                   keys=('memory_bank', 'm3dm.normalisation', 'm3dm.coreset_sizes', 'seed'),
                   exclude=('memory_bank.num_anchors',)),
        base.Stage('dlf', fit_dlf, owner=self.name, deps=('extract', 'm3dm/uff', 'm3dm/banks'),
                   keys=('m3dm.lambdas', 'm3dm.ocsvm_nu', 'm3dm.ocsvm_max_iter', 'scoring')),
    )

  def scorer(self, ctx: base.ScorerContext):
    if not self._fuses(ctx.config):
      return patchcore.PatchCore().scorer(ctx)
    detect, segment = dlf.load(ctx.dir('m3dm/dlf') / 'dlf.npz')
    return M3dmScorer(_bank_scorer(ctx), detect, segment)

