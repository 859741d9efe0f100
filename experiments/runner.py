"""Runs a method's stage graph (`experiments.stages`) for every class of a config, each stage cached and resumable.

A stage's key hashes the config fields it declares, what else it depends on (backbone weights, raw files) and its
upstream stages' keys, so changing a field re-runs exactly the stages it affects, and two methods in one work
directory share what they have in common. Each stage builds a new version of its outputs and publishes it when
complete (`g2sf_jax.workdir`); once every stage is up to date the runner records the versions in
`<method>/run.json`, then writes the method's report (`experiments.results`, `experiments.report`).
"""
import contextlib
import dataclasses
import json
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
from g2sf_jax.errors import ConfigError, MissingInputError, NonFiniteError, UserError
from g2sf_jax.methods import base
from g2sf_jax.workdir import StageHome, Version, Workdir, stage_key
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
  def classes(self) -> tuple[str, ...]:
    return self.runner.pool(self.stage)

  @property
  def out_dir(self) -> Path:
    return self.scratch or self.runner.building[self.stage.id, self.class_name]

  def data_dir(self, class_name: str | None = None) -> Path:
    return self.runner.output('prepare', class_name or self.class_name)

  def dir(self, stage_id: str) -> Path:
    stage = self.runner.stages[stage_id]
    return self.runner.output(stage_id, self.class_name if stage.scope == 'class' else '')

  def key(self, *names: str) -> jax.Array:
    return _prng_key(self.config, self.class_name, *names)

  def features(self, split: str, class_name: str | None = None) -> dict[str, np.ndarray]:
    return features.load_cached(self.runner.output('extract', class_name or self.class_name) / split)

  def samples(self, split: str, full: bool = False, class_name: str | None = None):
    load = prepared.load_split_full if full else prepared.load_split
    name = class_name or self.class_name
    found = load(self.config.dataset, self.data_dir(name), name, split)
    if split == 'train' and self.config.train.max_samples:  # a seeded subset (learning curves)
      return prepared.Subset(found, prepared.subset_indices(len(found), self.config.train.max_samples,
                                                            self.config.seed, name))
    return found

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
    self.raw_dir = config.raw_dir or None
    self.classes = data.resolve_classes(config.dataset, config.classes or self._default_classes(), self.raw_dir)
    self._pools = {s.id: self._pool_classes(s) for s in self.graph}
    self.workdir = Workdir(config.workdir)
    self.primary = distributed.is_primary()
    if self.primary:
      self.workdir.create()
    _log_to(self.workdir.open_log() if self.primary else None)
    self.mesh = distributed.make_mesh()  # over every process's devices
    self._backbones = None
    self._keys: dict[tuple[str, str], str] = {}
    self._current: dict[tuple[str, str], Version | None] = {}
    self.building: dict[tuple[str, str], Path] = {}  # the folder each running stage writes into

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

  def home(self, stage_id: str, class_name: str) -> StageHome:
    """Where the versions of `stage_id` for `class_name` live (the dataset's, for a dataset-scope stage)."""
    stage = self.stages[stage_id]
    return self.workdir.home(stage.folder(self.config), class_name if stage.scope == 'class' else '')

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

  def current(self, stage_id: str, class_name: str) -> Version | None:
    """The published version of `stage_id` for `class_name` if it is up to date: built from this run's inputs (its
    key), every file intact, and (`Stage.fresh`) its inputs outside the work directory unchanged. Memoised."""
    if (stage_id, class_name) not in self._current:
      stage = self.stages[stage_id]
      found = self.home(stage_id, class_name).current()
      ok = (found is not None and found.key == self.key(stage_id, class_name)
            and found.intact(refresh_stats=self.primary)
            and (stage.fresh is None or stage.fresh(Context(self, stage, class_name), found.info)))
      self._current[stage_id, class_name] = found if ok else None
    return self._current[stage_id, class_name]

  def is_done(self, stage: base.Stage, class_name: str) -> bool:
    return self.current(stage.id, class_name) is not None

  def output(self, stage_id: str, class_name: str) -> Path:
    """The folder of the up-to-date version of `stage_id` for `class_name` (a dependency of the running stage)."""
    found = self.current(stage_id, class_name)
    if found is None:
      raise MissingInputError(self._missing(stage_id, class_name))
    return found.path

  def _missing(self, stage_id: str, class_name: str) -> str:
    return (f'{self.home(stage_id, class_name).path}: the {stage_id!r} stage has no up-to-date, intact output'
            f'{f" for class {class_name!r}" if class_name else ""}; run it first: your experiments.run command with '
            f'{f"--config.classes={class_name} " if class_name else ""}--config.stages={self.stages[stage_id].name}')

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
        self._save_record()
        removed = self.workdir.remove_unused([self.home(s.id, n) for s in self.graph for n in self.scopes(s)])
        if removed:
          log.info('run: removed %d superseded output version(s)', len(removed))
      if 'evaluate' not in self.selected:
        return {}
      own = self.method.name
      evaluated = [results.class_result(c, self.method, self.output(f'{own}/evaluate', name),
                                        self.output(f'{own}/calibrate', name), self.output('prepare', name), name)
                   for name in self._reported_classes()]
      title = (f'g2sf-jax · {c.dataset} · {self.method.name}: rows {", ".join(self.method.rows(c))} · stages '
               f'{", ".join(s.id for s in self.graph)}')
      out = report.write_report(self.workdir.report_dir(self.method.name), evaluated, title=title)
      log.info('report: %s', out)
      return report.results_dict(evaluated)

  def _reported_classes(self) -> tuple[str, ...]:
    """The run's classes, then each other class whose evaluation is up to date under this config (as when each
    class runs as its own job): the report then covers every class evaluated so far, not only the last job's."""
    everything = data.resolve_classes(self.config.dataset, None, self.raw_dir)
    earlier = [n for n in everything if n not in self.classes
               and self.home(f'{self.method.name}/evaluate', n).path.is_dir()
               and self.current('prepare', n) is not None
               and self.current(f'{self.method.name}/evaluate', n) is not None]
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
          raise MissingInputError(self._missing(dep, scope))
    key = self.key(stage.id, name)
    home = self.home(stage.id, name)
    if self.primary:
      self.building[stage.id, name] = home.start(key, salvage=stage.salvage)
    distributed.barrier(f'{where} begins')
    start = time.perf_counter()
    if self.primary:
      try:
        info = dict(stage.run(Context(self, stage, name)) or {}, seconds=round(time.perf_counter() - start, 1))
      except NonFiniteError as e:
        raise NonFiniteError(f'{where}: {e}') from None
      home.publish(self.building.pop((stage.id, name)), stage.id, key, info)
      self._current.pop((stage.id, name), None)
    elif stage.all_processes:
      with self._scratch(stage, name, home) as scratch:
        stage.run(Context(self, stage, name, scratch))
    distributed.barrier(f'{where} ends')
    self._current.pop((stage.id, name), None)
    log.info('%s: done in %s', where, _duration(time.perf_counter() - start))
    return True

  @contextlib.contextmanager
  def _scratch(self, stage: base.Stage, name: str, home: StageHome):
    """A non-primary process's output folder for one stage: a copy of what process 0 starts from (a resumed stage
    must resume the same way in every process), hard-linked so that a resumed UFF's or fusion dataset's tens of GB
    cost nothing, removed afterwards; process 0's outputs are the run's."""
    root = self.workdir.root / f'.process-{jax.process_index()}'
    if root.exists():  # left by a killed run
      shutil.rmtree(root)
    path = root / stage.folder(self.config) / (name or '_dataset')
    io.link_tree(home.building(), path)
    try:
      yield path
    finally:
      shutil.rmtree(root)

  def _save_record(self) -> None:
    """`<method>/run.json`: the config (absolute paths) and the version of every stage of every class, what
    `Detector.load`, `experiments.predict` and the export read: written once every stage is up to date. Classes of
    an earlier record made under the same settings (another job of a per-class run) are kept."""
    c = ml_collections.ConfigDict(self.config.to_dict())
    for name in c.checkpoints:
      c.checkpoints[name] = str(Path(c.checkpoints[name]).absolute())
    c.workdir = str(self.workdir.root)
    config = json.loads(c.to_json(sort_keys=True))
    record = {'format': 1, 'method': self.method.name, 'config': config, 'classes': [], 'stages': {},
              'manifests': {}}
    now = {scope: {s.id: self.current(s.id, scope) for s in self.graph if scope in self.scopes(s)}
           for scope in (*self.classes, '')}
    shared = {s: str(v.path.relative_to(self.workdir.root)) for s, v in now[''].items()}
    with contextlib.suppress(UserError):
      old = self.workdir.read_record(self.method.name)
      # Earlier classes stay only if they were built on the same dataset-scope outputs (e.g. the same M3DM UFF).
      if _same_settings(old['config'], config) and old['stages'].get('', {}) == shared:
        record = old
    for scope, versions in now.items():
      for stage_id, version in versions.items():
        rel = str(version.path.relative_to(self.workdir.root))
        record['stages'].setdefault(scope, {})[stage_id] = rel
        record['manifests'][rel] = version.sha256
    record['config'] = config
    everything = data.resolve_classes(self.config.dataset, None, self.raw_dir) + self.classes
    record['classes'] = [n for n in dict.fromkeys(everything) if n in self.classes or n in record['classes']]
    used = {rel for scope in [*record['classes'], ''] for rel in record['stages'].get(scope, {}).values()}
    record['manifests'] = {rel: sha for rel, sha in record['manifests'].items() if rel in used}
    self.workdir.write_record(self.method.name, record)


def _same_settings(a: dict, b: dict) -> bool:
  """Whether two run configs differ only in which classes and stages they ran."""
  ignore = ('classes', 'stages', 'workdir', 'workers', 'distributed')
  return {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}


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
