"""Runs a method's stage graph for every class of a config, each stage cached and resumable.

The graph is the same for every method (`g2sf_jax.methods.base`):
  prepare    raw download (or the generated synthetic set) → TFDS array_record data        (SPEC §1)
  extract    train and test patch features, shared by every method of the work directory    (SPEC §2)
  …          the method's own stages (PatchCore banks, G²SF fusion data and training, …)
  evaluate   the method's scorer on the test features → evaluation.npz; then the report     (SPEC §3.3, §4.6, §5)

A stage's marker (`g2sf_jax.workdir`) records a hash of the config fields it declares, of what else it depends on
(backbone weights, raw files) and of its upstream stages' hashes, so changing a field re-runs exactly the stages it
affects, and two methods in one work directory share what they have in common.
"""
import contextlib
import dataclasses
import json
import logging
import shutil
import time
import zlib
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from experiments import config_check, report
from g2sf_jax import backbones, data, distributed, features, io, methods, parallel
from g2sf_jax.data import prepared, synthetic, transforms
from g2sf_jax.config_fields import get as config_value
from g2sf_jax.errors import ConfigError, DataError, MissingInputError, OutputExistsError
from g2sf_jax.methods import base
from g2sf_jax.workdir import Workdir, files_fingerprint, stage_key

log = logging.getLogger('g2sf')
ALL = 'all'


def run(config: ml_collections.ConfigDict) -> dict:
  """Runs the selected stages; returns the results table (`report.results_dict`) when `evaluate` ran."""
  return Runner(config).run()


# ---------------------------------------------------------------------------------------------------------------
# The shared stages.


def _prepare_extra(ctx: 'Context') -> Any:
  """The raw inputs of one class: the user's files (names, sizes, modification times), or the synthetic set's
  generation parameters when g2sf-jax generates it."""
  c = ctx.config
  if c.raw_dir:
    class_dir = Path(c.raw_dir).absolute() / ctx.class_name
    return str(class_dir), files_fingerprint(class_dir) if class_dir.is_dir() else None, prepared.VERSION
  params = {k: v for k, v in c.synthetic.to_dict().items() if k != 'classes'}
  if params.get('fov') == synthetic.FOV:  # the field is newer than some work directories: keep their keys
    del params['fov']
  return params, c.seed, prepared.VERSION


def _raw_dir(ctx: 'Context') -> Path:
  """The user's download (read only), or for the synthetic set without one the folder it is generated into."""
  return Path(ctx.config.raw_dir) if ctx.config.raw_dir else ctx.workdir.root / 'raw'


def _prepare(ctx: 'Context') -> dict:
  c = ctx.config
  raw_dir = _raw_dir(ctx)
  if c.dataset == 'synthetic' and not c.raw_dir:
    ctx.log('prepare: generating synthetic class %s in %s', ctx.class_name, raw_dir)
    synthetic.generate(raw_dir, classes=[ctx.class_name], n_train=c.synthetic.n_train, n_test=c.synthetic.n_test,
                       size=c.synthetic.size, seed=c.seed, modalities=c.synthetic.modalities,
                       fov=c.synthetic.fov, replace=True,  # <workdir>/raw is the runner's own
                       workers=parallel.resolve(c.workers))
  target = prepared.prepared_dir(c.dataset, ctx.workdir.data_dir, ctx.class_name)
  if target.exists():  # prepared from other raw inputs (this stage's key changed): ours to rebuild
    if not (target / 'dataset_info.json').is_file():
      raise OutputExistsError(f'{target}: exists but is not prepared TFDS data; move it away or choose another '
                            '--config.workdir')
    shutil.rmtree(target.parent)
  for stale in target.parent.glob(f'incomplete.*_{prepared.VERSION}'):  # TFDS's folder of an interrupted build
    shutil.rmtree(stale)
  import tensorflow_datasets as tfds  # Heavy: only this stage needs it directly.
  tfds.disable_progress_bar()
  result = prepared.prepare(c.dataset, raw_dir, ctx.workdir.data_dir, [ctx.class_name],
                            workers=parallel.resolve(c.workers))[ctx.class_name]
  for problem in result['problems']:
    log.warning('prepare %s: %s', ctx.class_name, problem)
  _check_modalities(ctx)
  return result


def _check_modalities(ctx: 'Context') -> None:
  """The config's modalities must be in the prepared data (an RGB-only set cannot run rgb+xyz)."""
  have = prepared.available_modalities(ctx.config.dataset, ctx.workdir.data_dir, ctx.class_name)
  missing = [m for m in base.modalities(ctx.config) if m not in have]
  if missing:
    raise ConfigError(f'config.modalities={ctx.config.modalities!r}, but class {ctx.class_name!r} has no '
                     f'{missing[0]} files in {ctx.workdir.data_dir}; run with --config.modalities={"+".join(have)}')


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


def _extract_extra(ctx: 'Context') -> Any:
  rgb, point = ctx.backbones()  # first: it may convert shipped weights whose checkpoint meta is keyed below
  return features.describe_backbone(rgb), features.describe_backbone(point), _checkpoint_meta(ctx.config)


def _check_test_labels(ctx: 'Context') -> None:
  """Image and pixel AUROC need good and anomalous test images: a class without both fails before any training."""
  labels = prepared.labels(ctx.config.dataset, ctx.workdir.data_dir, ctx.class_name, 'test')
  bad = int(labels.sum())
  if bad == 0 or bad == len(labels):
    raise DataError(f'class {ctx.class_name!r}: its test split has {len(labels) - bad} good and {bad} anomalous '
                    'samples; the evaluation (I-AUROC, P-AUROC, AUPRO) needs both')


def _extract(ctx: 'Context') -> dict:
  c = ctx.config
  _check_modalities(ctx)
  _check_test_labels(ctx)
  rgb, point = ctx.backbones()
  extra = {'checkpoints': _checkpoint_meta(c), 'point_mae': c.point_mae.to_dict()}
  counts = {}
  for split in ('train', 'test'):
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


PREPARE = base.Stage('prepare', _prepare, extra=_prepare_extra, keys=('dataset',), all_processes=False,
                     complete=lambda ctx: prepared.is_prepared(ctx.config.dataset, ctx.workdir.data_dir,
                                                               ctx.class_name))
EXTRACT = base.Stage('extract', _extract, deps=('prepare',), keys=('modalities', 'point_mae', 'seed'),
                     extra=_extract_extra, version=2, variant=_extract_variant)


def _evaluate(ctx: 'Context') -> dict:
  """The method's scorer on every test sample → `evaluation.npz` (labels, masks, names; per row score_/map_ and, where
  the method computes AUPRO on other maps, pro_map_)."""
  c = ctx.config
  scorer = ctx.method.scorer(ctx)
  test = ctx.samples('test')
  feats = ctx.features('test')
  inputs = base.scorer_inputs(scorer)
  batches = []
  for start in tqdm(range(0, len(test), c.batch_size), desc=f'{ctx.class_name} scoring', unit='batch'):
    batch = {k: v[start:start + c.batch_size] for k, v in feats.items()}
    if inputs:
      samples = test[start:start + c.batch_size]
      batch.update({name: np.stack([s[name] for s in samples]) for name in inputs})
    batches.append(scorer(batch))
  scores = base.stack_rows(batches)
  arrays = {'labels': np.array([s['label'] for s in test]), 'masks': np.stack([s['mask'] for s in test]),
            'names': np.array([s['name'] for s in test])}
  for row, r in scores.items():
    arrays[f'score_{row}'] = r.image
    arrays[f'map_{row}'] = r.maps
    if r.pro_maps is not None:
      arrays[f'pro_map_{row}'] = r.pro_maps
  io.save_npz_atomic(ctx.out_dir / 'evaluation.npz', **arrays)
  return {'rows': list(scores)}


def stage_graph(method: base.Method, config: ml_collections.ConfigDict) -> tuple[base.Stage, ...]:
  """prepare, extract, the method's stages, evaluate; checked for unknown or out-of-order dependencies."""
  own = method.stages(config)
  evaluate = base.Stage('evaluate', _evaluate, owner=method.name, deps=('extract',) + tuple(s.id for s in own),
                        keys=('scoring',) + method.scoring_keys)
  graph = (PREPARE, EXTRACT) + tuple(own) + (evaluate,)
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


# ---------------------------------------------------------------------------------------------------------------
# The runner.


@dataclasses.dataclass
class Context:
  """`base.StageContext` for one stage and class of a run."""
  runner: 'Runner'
  stage: base.Stage
  class_name: str
  scratch: Path | None = None  # a non-primary process's private output folder (multi-process runs)

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.runner.config

  @property
  def method(self) -> base.Method:
    return self.runner.method

  @property
  def workdir(self) -> Workdir:
    return self.runner.workdir

  @property
  def mesh(self):
    return self.runner.mesh

  @property
  def data_dir(self) -> Path:
    return self.runner.workdir.data_dir

  @property
  def classes(self) -> tuple[str, ...]:
    return self.runner.pool(self.stage)

  @property
  def out_dir(self) -> Path:
    return self.scratch or self.dir(self.stage.id)

  def dir(self, stage_id: str) -> Path:
    return self.runner.stage_dir(stage_id, self.class_name)

  def key(self, *names: str) -> jax.Array:
    return _prng_key(self.config, self.class_name, *names)

  def features(self, split: str, class_name: str | None = None) -> dict[str, np.ndarray]:
    return features.load_cached(self.runner.stage_dir('extract', class_name or self.class_name) / split)

  def samples(self, split: str, full: bool = False, class_name: str | None = None):
    load = prepared.load_split_full if full else prepared.load_split
    return load(self.config.dataset, self.workdir.data_dir, class_name or self.class_name, split)

  def backbones(self):
    return self.runner.backbones()

  def progress(self, total: int, desc: str, unit: str = 'img'):
    return tqdm(total=total, desc=desc, unit=unit, disable=not distributed.is_primary())

  def log(self, msg: str, *args) -> None:
    log.info(msg, *args)


class Runner:
  """One run: its config, method, stage graph, work directory and device mesh."""

  def __init__(self, config: ml_collections.ConfigDict):
    config_check.validate(config)  # every field, before anything is written
    self.config = config
    self.method = methods.get(config.method)
    self.graph = stage_graph(self.method, config)
    self.stages = {s.id: s for s in self.graph}
    self.selected = _selected_stages(config.stages, self.graph)
    self.classes = data.resolve_classes(config.dataset, config.classes or self._default_classes())
    self._pools = {s.id: self._pool_classes(s) for s in self.graph}
    self.workdir = Workdir(config.workdir)
    self.workdir.root.mkdir(parents=True, exist_ok=True)
    self.primary = distributed.is_primary()
    _log_to(self.workdir.root / 'run.log' if self.primary else None)
    self.mesh = distributed.make_mesh()  # over every process's devices
    self._backbones = None
    self._keys: dict[tuple[str, str], str] = {}

  def _pool_classes(self, stage: base.Stage) -> tuple[str, ...]:
    if not (stage.pool and config_value(self.config, stage.pool)):
      return self.classes
    return config_check.classes(self.config, stage.pool, self.config.dataset)

  def pool(self, stage: base.Stage) -> tuple[str, ...]:
    """The classes `stage` reads across (`Stage.pool`)."""
    return self._pools[stage.id]

  def _default_classes(self) -> str:
    return self.config.synthetic.classes if self.config.dataset == 'synthetic' else ''

  def backbones(self):
    if self._backbones is None:
      mods = base.modalities(self.config)
      self._backbones = (backbones.make_rgb_backbone(self.config, self.mesh) if 'rgb' in mods else None,
                         backbones.make_point_backbone(self.config, self.mesh) if 'xyz' in mods else None)
    return self._backbones

  def stage_dir(self, stage_id: str, class_name: str) -> Path:
    """The output folder of `stage_id` for `class_name` (its dataset's folder for a dataset-scope stage)."""
    stage = self.stages[stage_id]
    return self.workdir.stage_dir(stage.folder(self.config), class_name if stage.scope == 'class' else '')

  def scopes(self, stage: base.Stage) -> tuple[str, ...]:
    return self.classes if stage.scope == 'class' else ('',)

  def dep_scopes(self, stage: base.Stage, dep: str, class_name: str) -> tuple[str, ...]:
    """Whose outputs of stage `dep` `stage` reads for `class_name`: that class's, or every class of its pool for a
    dataset-scope stage (`class_name=''`), or the dataset's for a dataset-scope dependency."""
    if self.stages[dep].scope == 'dataset':
      return ('',)
    return (class_name,) if class_name else self.pool(stage)

  def key(self, stage_id: str, class_name: str) -> str:
    """The hash of everything the outputs of `stage_id` for `class_name` depend on (memoised per run)."""
    if (stage_id, class_name) not in self._keys:
      stage = self.stages[stage_id]
      ctx = Context(self, stage, class_name)
      upstream = []
      for dep in stage.deps:
        upstream.append([self.key(dep, s) for s in self.dep_scopes(stage, dep, class_name)])
      extra = stage.extra(ctx) if stage.extra else None
      exclude = stage.exclude
      if stage.pool:  # the resolved pool, not the field: '' and the run's own list give one key
        extra = list(self.pool(stage)) if extra is None else [list(self.pool(stage)), extra]
        exclude += (stage.pool,)
      self._keys[stage_id, class_name] = stage_key(stage.id, stage.version, class_name,
                                                   config_fields(self.config, stage.keys, exclude), extra, upstream)
    return self._keys[stage_id, class_name]

  def is_done(self, stage: base.Stage, class_name: str) -> bool:
    if not self.workdir.is_done(stage.folder(self.config), class_name, self.key(stage.id, class_name)):
      return False
    return stage.complete is None or stage.complete(Context(self, stage, class_name))

  def run(self) -> dict:
    """Every selected stage for every class. In a multi-process run all processes call this together; process 0
    holds the lock, decides what is up to date and writes every output, the others compute beside it."""
    c = self.config
    selected = [s.id for s in self.graph if s.name in self.selected]
    what = f'method {self.method.name}, stages {",".join(selected)}'
    with self.workdir.lock(what) if self.primary else contextlib.nullcontext():
      if self.primary:
        backbones.convert_shipped_weights(c)  # once, before the other processes look for the checkpoint
      distributed.barrier('run start')
      log.info('run: method %s, dataset %s, classes %s, stages %s, rows %s, workdir %s, %d process(es), %d '
               'device(s)', self.method.name, c.dataset, ','.join(self.classes), ','.join(selected),
               ','.join(self.method.rows(c)), self.workdir.root, jax.process_count(), self.mesh.size)
      ran = []
      for stage in self.graph:
        if stage.name not in self.selected:
          continue
        for name in self.scopes(stage):
          if self._run(stage, name):
            ran.append(stage.id)
      log.info('run: ran %s', ', '.join(dict.fromkeys(ran)) or 'nothing (every selected stage was up to date)')
      if not self.primary:
        return {}
      if all(self.is_done(s, n) for s in self.graph for n in self.scopes(s)):
        self._save_config()
      if 'evaluate' not in self.selected:
        return {}
      results = [self._class_result(name) for name in self._reported_classes()]
      title = (f'g2sf-jax · {c.dataset} · {self.method.name}: rows {", ".join(self.method.rows(c))} · stages '
               f'{", ".join(s.id for s in self.graph)}')
      out = report.write_report(self.workdir.report_dir(self.method.name), results, title=title)
      log.info('report: %s', out)
      return report.results_dict(results)

  def _reported_classes(self) -> tuple[str, ...]:
    """The run's classes, then each other class whose evaluation is up to date under this config (as when each
    class runs as its own job): the report then covers every class evaluated so far, not only the last job's."""
    evaluate = self.stages[f'{self.method.name}/evaluate']
    everything = data.resolve_classes(self.config.dataset)
    earlier = [n for n in everything if n not in self.classes
               and self.workdir.marker(evaluate.folder(self.config), n).is_file()
               and (self.stage_dir(evaluate.id, n) / 'evaluation.npz').is_file()
               and prepared.is_prepared(self.config.dataset, self.workdir.data_dir, n)
               and self.is_done(evaluate, n)]
    if not earlier:
      return self.classes
    log.info('report: also %s, evaluated earlier with these settings', ', '.join(earlier))
    return tuple(n for n in everything if n in self.classes or n in earlier)  # in the dataset's order

  def _run(self, stage: base.Stage, name: str) -> bool:
    """Runs one stage for one class (or the dataset) unless it is up to date; True if it ran."""
    where = f'{stage.id} {name}'.strip()
    if distributed.primary_decides(self.is_done(stage, name)):
      log.info('%s: up to date', where)
      return False
    for dep in stage.deps:
      for scope in self.dep_scopes(stage, dep, name):
        if not distributed.primary_decides(self.is_done(self.stages[dep], scope)):
          raise MissingInputError(
              f'{self.stage_dir(dep, scope)}: the {dep!r} stage has no up-to-date output'
              f'{f" for class {scope!r}" if scope else ""}; run it first: your experiments.run command with '
              f'{f"--config.classes={scope} " if scope else ""}--config.stages={self.stages[dep].name}')
    key = self.key(stage.id, name)
    folder = stage.folder(self.config)
    if self.primary:
      self.workdir.fresh_dir(folder, name, key)
    distributed.barrier(f'{where} begins')
    start = time.perf_counter()
    if self.primary:
      info = stage.run(Context(self, stage, name))
      self.workdir.mark_done(folder, name, key, dict(info or {}, seconds=round(time.perf_counter() - start, 1)))
    elif stage.all_processes:
      with self._scratch(stage, name) as scratch:
        stage.run(Context(self, stage, name, scratch))
    distributed.barrier(f'{where} ends')
    log.info('%s: done in %s', where, _duration(time.perf_counter() - start))
    return True

  @contextlib.contextmanager
  def _scratch(self, stage: base.Stage, name: str):
    """A non-primary process's output folder for one stage: a copy of what process 0 starts from (a resumed stage
    must resume the same way in every process), hard-linked so that a resumed UFF's or fusion dataset's tens of GB
    cost nothing, removed afterwards; process 0's outputs are the run's."""
    root = self.workdir.root / f'.process-{jax.process_index()}'
    if root.exists():  # left by a killed run
      shutil.rmtree(root)
    path = root / stage.folder(self.config) / (name or '_dataset')
    io.link_tree(self.stage_dir(stage.id, name), path)
    try:
      yield path
    finally:
      shutil.rmtree(root)

  def _save_config(self) -> None:
    """`<method>/config.json`: what `Detector.load` and `experiments.predict` rebuild the run from (absolute
    paths); written only once every stage of the method is up to date under this config."""
    c = ml_collections.ConfigDict(self.config.to_dict())
    for name in c.checkpoints:
      c.checkpoints[name] = str(Path(c.checkpoints[name]).absolute())
    c.workdir = str(self.workdir.root)
    with io.atomic_write(self.workdir.config_path(self.method.name), 'w') as f:
      f.write(c.to_json(indent=1, sort_keys=True))

  def _class_result(self, name: str) -> report.ClassResult:
    c = self.config
    evaluation = self.stage_dir(f'{self.method.name}/evaluate', name) / 'evaluation.npz'
    with np.load(evaluation) as z:
      arrays = {k: z[k] for k in z.files}
    rows = {row: report.RowResult.compute(arrays['labels'], arrays[f'score_{row}'], arrays['masks'],
                                          arrays[f'map_{row}'], c.metrics.aupro_limits, c.metrics.aupro_thresholds,
                                          pro_maps=arrays.get(f'pro_map_{row}'))
            for row in self.method.rows(c)}
    map_row = self.method.main_row(c)
    full = prepared.load_split_full(c.dataset, self.workdir.data_dir, name, 'test')
    images, problems = [], []
    for i in range(len(arrays['labels'])):
      sample = full[i]
      images.append(report.ImageRecord(str(arrays['names'][i]), _picture224(sample), arrays[f'map_{map_row}'][i],
                                       arrays['masks'][i], int(arrays['labels'][i]),
                                       float(arrays[f'score_{map_row}'][i])))
      problems += [(sample['name'], p) for p in sample['problems']]
    return report.ClassResult(name, rows, images, map_row=map_row, problems=problems)


def _duration(seconds: float) -> str:
  return f'{seconds:.1f} s' if seconds < 120 else f'{int(seconds // 60)} min {seconds % 60:.0f} s'


def config_fields(config: ml_collections.ConfigDict, keys: tuple[str, ...], exclude: tuple[str, ...] = ()) -> dict:
  """`{dotted key: value}` of `keys` (a section gives all its fields) without the `exclude` sub-fields."""
  out = {}
  for key in keys:
    value = config
    for part in key.split('.'):
      value = value[part]
    if isinstance(value, ml_collections.ConfigDict):
      value = value.to_dict()
      for ex in exclude:
        if ex.startswith(key + '.'):
          value.pop(ex[len(key) + 1:], None)
    out[key] = value
  return out


def _prng_key(config, *path: str) -> jax.Array:
  """The run's PRNG key folded with names (class, stage, modality): explicit and reproducible."""
  key = jax.random.key(config.seed)
  for p in path:
    key = jax.random.fold_in(key, zlib.crc32(p.encode()))
  return key


def _picture224(sample: dict) -> np.ndarray:
  """uint8 [224, 224, 3] to draw the overlays on: the RGB (PIL bicubic, SPEC §1.4), or for 3D-only data the depth
  (z of the valid points, nearer = brighter)."""
  if 'rgb' in sample:
    return np.asarray(Image.fromarray(sample['rgb']).resize((224, 224), Image.BICUBIC))
  xyz = transforms.resize_xyz(sample['xyz'])
  valid = transforms.valid_mask(xyz)
  grey = np.zeros(valid.shape, np.uint8)
  if valid.any():
    z = xyz[..., 2][valid]
    grey[valid] = np.round(255 * (z.max() - z) / max(float(z.max() - z.min()), 1e-12)).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1)


def _selected_stages(stages: str, graph: tuple[base.Stage, ...]) -> tuple[str, ...]:
  names = tuple(dict.fromkeys(s.name for s in graph))
  chosen = tuple(s.strip() for s in stages.split(',') if s.strip())
  if chosen == (ALL,):
    return names
  unknown = [s for s in chosen if s not in names]
  if unknown or not chosen:
    raise ConfigError(f'config.stages: unknown {unknown or "empty"}; choose {ALL!r} or from {",".join(names)}')
  return chosen


def _log_to(path: Path | None) -> None:
  """INFO to the terminal and to `path`, `<workdir>/run.log` (appended: the log of every resumed run), unless None
  (the other processes of a multi-process run: their terminal only)."""
  root = logging.getLogger('g2sf')
  root.setLevel(logging.INFO)
  root.propagate = False  # absl's handler would print every line a second time
  if path is not None and not any(isinstance(h, logging.FileHandler) and h.baseFilename == str(path) for h in root.handlers):
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
    root.addHandler(handler)
  if not any(type(h) is logging.StreamHandler for h in root.handlers):
    stream = logging.StreamHandler()
    stream.setFormatter(logging.Formatter('%(message)s'))
    root.addHandler(stream)
