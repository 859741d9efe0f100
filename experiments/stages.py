"""The stages every method shares, and the graph a run walks: prepare, extract, the method's own stages, evaluate.

  prepare    raw files (or the generated synthetic set) → TFDS array_record data            (algorithms.md §1)
  extract    train and test patch features, shared by every method of the work directory  (algorithms.md §2)
  …          the method's own stages (PatchCore banks, G²SF fusion data and training, …)
  calibrate  the method's scorer on the validation scans → thresholds (g2sf_jax.calibration)
  evaluate   the method's scorer on the test scans → evaluation.npz                       (§3.3, §4.6, §5)

Calibration and evaluation score through `g2sf_jax.scoring`, the path predict and the exported bundle take.
"""
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from g2sf_jax import calibration, detector, features, io, methods, parallel, scoring
from g2sf_jax.calibration import Calibration
from g2sf_jax.data import prepared, synthetic, transforms
from g2sf_jax.errors import ConfigError, DataError, require_finite
from g2sf_jax.methods import base
from g2sf_jax.workdir import files_fingerprint, no_symlinks, stage_key

log = logging.getLogger('g2sf')


def _prepare_extra(ctx: base.StageContext) -> Any:
  """The raw inputs of one class: the user's files (paths, sizes, modification times, through symbolic links), or
  the synthetic set's generation parameters when g2sf-jax generates it."""
  c = ctx.config
  if c.raw_dir:
    class_dir = Path(c.raw_dir).absolute() / ctx.class_name
    return str(class_dir), files_fingerprint(class_dir) if class_dir.is_dir() else None, prepared.VERSION
  params = {k: v for k, v in c.synthetic.to_dict().items() if k != 'classes'}
  return params, c.seed, prepared.VERSION


def _generated_dir(ctx: base.StageContext) -> Path:
  return ctx.workdir.root / 'raw' / ctx.class_name


def _prepare_fresh(ctx: base.StageContext, info: dict) -> bool:
  """Generated synthetic files must still be those prepare read: an edited one is generated again (the key holds
  only the generation parameters). A user's raw files are in the key itself."""
  if ctx.config.raw_dir:
    return True
  folder = _generated_dir(ctx)
  return folder.is_dir() and files_fingerprint(folder) == info.get('raw_fingerprint')


def _prepare(ctx: base.StageContext) -> dict:
  c = ctx.config
  raw_dir = Path(c.raw_dir) if c.raw_dir else ctx.workdir.root / 'raw'
  extra = {}
  if c.dataset == 'synthetic' and not c.raw_dir:
    no_symlinks(_generated_dir(ctx), ctx.workdir.root)  # the runner's own folder: never written through a link
    ctx.log('prepare: generating synthetic class %s in %s', ctx.class_name, raw_dir)
    synthetic.generate(raw_dir, classes=[ctx.class_name], n_train=c.synthetic.n_train, n_test=c.synthetic.n_test,
                       size=c.synthetic.size, seed=c.seed, modalities=c.synthetic.modalities,
                       fov=c.synthetic.fov, replace=True,  # <workdir>/raw is the runner's own
                       workers=parallel.resolve(c.workers))
    extra['raw_fingerprint'] = files_fingerprint(_generated_dir(ctx))
  for stale in (ctx.out_dir / c.dataset / ctx.class_name).glob('incomplete.*'):  # TFDS's interrupted build
    shutil.rmtree(stale)
  import tensorflow_datasets as tfds  # Heavy: only this stage needs it directly.
  tfds.disable_progress_bar()
  result = prepared.prepare(c.dataset, raw_dir, ctx.out_dir, [ctx.class_name], workers=parallel.resolve(c.workers),
                            max_pixels=c.max_pixels, holdout=c.calibration.holdout, seed=c.seed,
                            clean=c.clean_scans)[ctx.class_name]
  for problem in result['problems']:
    log.warning('prepare %s: %s', ctx.class_name, problem)
  _check_modalities(ctx, ctx.out_dir)
  return dict(result, path=str(Path(result['path']).relative_to(ctx.out_dir)), **extra)


def _check_modalities(ctx: base.StageContext, data_dir: Path) -> None:
  """The config's modalities must be in the prepared data (an RGB-only set cannot run rgb+xyz)."""
  have = prepared.available_modalities(ctx.config.dataset, data_dir, ctx.class_name)
  missing = [m for m in base.modalities(ctx.config) if m not in have]
  if missing:
    raise ConfigError(f'config.modalities={ctx.config.modalities!r}, but class {ctx.class_name!r} has no '
                      f'{missing[0]} files; run with --config.modalities={"+".join(have)}')


def _checkpoint_meta(config: ml_collections.ConfigDict) -> dict:
  """What the converted backbone checkpoints were made from, so new weights invalidate the features."""
  out = {}
  mods = base.modalities(config)
  for field, mod in (('rgb_backbone', 'rgb'), ('point_backbone', 'xyz')):
    name = config[field]
    meta = Path(config.checkpoints.get(name, '') or '/nonexistent') / 'g2sf_meta.json'
    if mod in mods and meta.is_file():
      out[name] = json.loads(meta.read_text())
  return out


def _extract_extra(ctx: base.StageContext) -> Any:
  rgb, point = ctx.backbones()  # first: it may convert shipped weights whose checkpoint meta is keyed below
  return features.describe_backbone(rgb), features.describe_backbone(point), _checkpoint_meta(ctx.config)


def _extract(ctx: base.StageContext) -> dict:
  """Patch features of every split the class has: train (a seeded subset under `train.max_samples`), validation
  and test."""
  c = ctx.config
  _check_modalities(ctx, ctx.data_dir())
  rgb, point = ctx.backbones()
  extra = {'checkpoints': _checkpoint_meta(c), 'point_mae': c.point_mae.to_dict()}
  counts = {}
  for split in prepared.splits(c.dataset, ctx.data_dir(), ctx.class_name):
    samples = ctx.samples(split)
    bar = ctx.progress(len(samples), f'{ctx.class_name} {split} features')
    features.extract_to_cache(ctx.out_dir / split, rgb, point, samples, c.batch_size, extra_key=extra,
                              log=log.debug, progress=bar.update)
    bar.close()
    counts[split] = len(samples)
  return counts


def _extract_variant(config: ml_collections.ConfigDict) -> str:
  """The features' folder: the backbones and a hash of their settings (e.g. `efficientnet_lite0+fpfh-1a2b3c4d`), so
  methods with other backbones or PointMAE groupings (M3DM and CFM use 1024 groups, G²SF 512) keep their own."""
  mods = base.modalities(config)
  names = [config.rgb_backbone if 'rgb' in mods else '', config.point_backbone if 'xyz' in mods else '']
  settings = [config.get(config.point_backbone).to_dict() if 'xyz' in mods and config.point_backbone in config
              else None, config.modalities]
  return f'{"+".join(n for n in names if n)}-{stage_key(names, settings)[:8]}'


PREPARE = base.Stage('prepare', _prepare, extra=_prepare_extra, keys=('dataset', 'clean_scans', 'calibration.holdout',
                                                                    'seed'), all_processes=False, fresh=_prepare_fresh)
EXTRACT = base.Stage('extract', _extract, deps=('prepare',), keys=('modalities', 'point_mae', 'seed', 'train'),
                     extra=_extract_extra, version=2, variant=_extract_variant, salvage=True)


def _model(ctx: base.StageContext, calibration: Calibration | None) -> detector.Detector:
  """The class's detector as the run has it so far: what the calibration and the evaluation score through."""
  rgb, point = ctx.backbones()
  return detector.Detector(ctx.config, ctx.method.scorer(ctx), rgb, point,
                           detector.data_modalities(ctx.config, ctx.data_dir(), ctx.class_name), ctx.class_name,
                           calibration)


def _score_split(ctx: base.StageContext, split: str, model: detector.Detector) -> tuple[list, list]:
  """(the split's samples at stored resolution, their `scoring.ScanResult`s) from its cached features."""
  samples = ctx.samples(split, full=True)
  found = scoring.score_stored(model, [prepared.stored(s) for s in samples], [s['name'] for s in samples],
                               feats=ctx.features(split), decide=False)
  for r in found:
    if r.status != 'ok':
      ctx.log('%s %s: %s cannot be scored (%s); left out of the %s scans', split, ctx.class_name, r.name, r.reason,
              split)
  return samples, found


def _masks224(samples) -> np.ndarray:
  return np.stack([transforms.resize_mask(s['mask']) for s in samples]) if samples else np.zeros((0, 224, 224), bool)


def _calibrate(ctx: base.StageContext) -> dict:
  """Thresholds per row from the validation scans (`g2sf_jax.calibration`) → `calibration.json`."""
  c = ctx.config
  if 'validation' not in prepared.splits(c.dataset, ctx.data_dir(), ctx.class_name):
    raise DataError(f'class {ctx.class_name!r} has no validation scans to calibrate on: add a validation/ folder '
                    'or hold out part of train/good (config.calibration.holdout > 0)')
  samples, found = _score_split(ctx, 'validation', _model(ctx, None))
  ok = [i for i, r in enumerate(found) if r.status == 'ok']
  if not ok:
    raise DataError(f'class {ctx.class_name!r}: none of its validation scans can be scored')
  scores = {row: (np.array([found[i].image[row] for i in ok]), np.stack([found[i].maps[row] for i in ok]))
            for row in ctx.method.rows(c)}
  labels = np.array([samples[i]['label'] for i in ok], bool)
  with_mask = np.array([samples[i]['has_mask'] for i in ok], bool)
  masks = _masks224([samples[i] for i in ok]) & with_mask[:, None, None]
  source = prepared.validation_source(c.dataset, ctx.data_dir(), ctx.class_name)
  found_cal = calibration.fit(scores, labels, masks if (labels & with_mask).any() else None, c.calibration.rule,
                              c.calibration.quantile, c.calibration.margin, source)
  found_cal.save(ctx.out_dir / calibration.FILE)
  ctx.log('calibrate %s: %d validation scans (%s, %d defective), rule %s', ctx.class_name, len(ok), source,
          int(labels.sum()), next(iter(found_cal.rows.values())).rule)
  return {'source': source, 'scans': len(ok), 'thresholds': {r: [cal.image.value, cal.pixel.value]
                                                             for r, cal in found_cal.rows.items()}}


def _evaluate(ctx: base.StageContext) -> dict:
  """The method's rows on every test scan → `evaluation.npz`: labels, masks (224², `has_mask`), names, `scored`
  (False for a scan that cannot be scored), per row `score_`, `map_`, `decision_` (1 = defect at the calibrated
  threshold) and, where the method computes AUPRO on other maps, `pro_map_`. A class without test scans gets an
  empty evaluation."""
  c = ctx.config
  cal = calibration.Calibration.load(ctx.dir(f'{ctx.method.name}/calibrate') / calibration.FILE)
  rows = ctx.method.rows(c)
  if 'test' in prepared.splits(c.dataset, ctx.data_dir(), ctx.class_name):
    samples, found = _score_split(ctx, 'test', _model(ctx, cal))
  else:
    samples, found = [], []
  scored = np.array([r.status == 'ok' for r in found], bool)
  arrays = {'labels': np.array([s['label'] for s in samples], np.int64), 'masks': _masks224(samples),
            'has_mask': np.array([s['has_mask'] for s in samples], bool),
            'names': np.array([s['name'] for s in samples], str), 'scored': scored}
  blank = np.zeros((224, 224), np.float32)
  for row in rows:
    image = np.array([r.image.get(row, 0.0) for r in found], np.float32)
    arrays[f'score_{row}'] = image
    arrays[f'map_{row}'] = np.stack([r.maps.get(row, blank) for r in found]) if found else np.zeros((0, 224, 224))
    arrays[f'decision_{row}'] = (cal.rows[row].is_defect(image) & scored).astype(np.int8)
    if any(row in r.pro_maps for r in found):
      arrays[f'pro_map_{row}'] = np.stack([r.pro_maps.get(row, blank) for r in found])
    require_finite(f'the {row} scores or maps of the test set', image, arrays[f'map_{row}'])
  io.save_npz_atomic(ctx.out_dir / 'evaluation.npz', **arrays)
  return {'rows': list(rows), 'test': len(samples), 'unscorable': int((~scored).sum())}


def stage_graph(method: base.Method, config: ml_collections.ConfigDict) -> tuple[base.Stage, ...]:
  """prepare, extract, the method's stages, calibrate, evaluate; checked for unknown or out-of-order dependencies."""
  own = method.stages(config)
  trained = ('extract',) + tuple(s.id for s in own)
  calibrate = base.Stage('calibrate', _calibrate, owner=method.name, deps=trained,
                         keys=('scoring', 'calibration.rule', 'calibration.quantile', 'calibration.margin')
                         + method.scoring_keys)
  evaluate = base.Stage('evaluate', _evaluate, owner=method.name, deps=trained + (calibrate.id,),
                        keys=('scoring',) + method.scoring_keys)
  graph = (PREPARE, EXTRACT) + tuple(own) + (calibrate, evaluate)
  seen = set()
  for stage in graph:
    missing = [d for d in stage.deps if d not in seen]
    if missing:
      raise ValueError(f'method {method.name!r}: stage {stage.id} depends on {missing}, which no earlier stage is')
    if stage.id in seen:
      raise ValueError(f'method {method.name!r}: two stages named {stage.id}')
    seen.add(stage.id)
  return graph


def stage_folder(config: ml_collections.ConfigDict, stage_id: str) -> str:
  """Where stage `stage_id` of `config`'s method keeps its outputs, below the class (e.g. 'extract/…-1a2b3c4d')."""
  return {s.id: s for s in stage_graph(methods.get(config.method), config)}[stage_id].folder(config)
