"""Runs a method's stage graph (`experiments.stages`) for every class of a config, each stage cached and resumable.

A stage's marker (`g2sf_jax.workdir`) records a hash of the config fields it declares, of what else it depends on
(backbone weights, raw files) and of its upstream stages' hashes, so changing a field re-runs exactly the stages it
affects, and two methods in one work directory share what they have in common. After `evaluate` the runner writes
the method's report (`experiments.results`, `experiments.report`).
"""
import contextlib
import dataclasses
import logging
import shutil
import time
import zlib
from pathlib import Path

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from experiments import config_check, report, results, stages
from g2sf_jax import backbones, data, distributed, features, io, methods
from g2sf_jax.config_fields import get as config_value
from g2sf_jax.data import prepared
from g2sf_jax.errors import ConfigError, MissingInputError
from g2sf_jax.methods import base
from g2sf_jax.workdir import Workdir, stage_key
from ports import efficientnet_lite0

log = logging.getLogger('g2sf')
ALL = 'all'


def run(config: ml_collections.ConfigDict) -> dict:
  """Runs the selected stages; returns the results table (`report.results_dict`) when `evaluate` ran."""
  return Runner(config).run()


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
    self.graph = stages.stage_graph(self.method, config)
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
      efficientnet_lite0.ensure_for(self.config)
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
        efficientnet_lite0.ensure_for(c)  # once, before the other processes look for the checkpoint
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
      evaluated = [results.class_result(c, self.method, self.stage_dir(f'{self.method.name}/evaluate', name),
                                        self.workdir.data_dir, name) for name in self._reported_classes()]
      title = (f'g2sf-jax · {c.dataset} · {self.method.name}: rows {", ".join(self.method.rows(c))} · stages '
               f'{", ".join(s.id for s in self.graph)}')
      out = report.write_report(self.workdir.report_dir(self.method.name), evaluated, title=title)
      log.info('report: %s', out)
      return report.results_dict(evaluated)

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
  if path is not None and not any(isinstance(h, logging.FileHandler) and h.baseFilename == str(path)
                                  for h in root.handlers):
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
    root.addHandler(handler)
  if not any(type(h) is logging.StreamHandler for h in root.handlers):
    stream = logging.StreamHandler()
    stream.setFormatter(logging.Formatter('%(message)s'))
    root.addHandler(stream)
