"""The stages of an experiment, for every class of its config, each cached and resumable.

prepare      raw download (or the generated synthetic set) → TFDS array_record data        (SPEC §1)
features     train/test patch features → memory banks and coresets                          (SPEC §2–3)
fusion_data  synthetic anomalies → the fusion dataset (G²SF only)                           (SPEC §4.2–4.3)
train        LSPN and global scale (G²SF only)                                              (SPEC §4.5)
evaluate     IMG / PCD / FUS (or BTF) rows → metrics, results.{md,json}, report.html        (SPEC §3.3, §4.6, §5)

A stage's marker (`experiments.stage_cache`) records a hash of everything its outputs depend on, the upstream
stages' hashes included, so changing a config field re-runs exactly the stages it affects.
"""
import json
import logging
import shutil
import zlib
from pathlib import Path

import jax
import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from experiments import report
from experiments.configs.common import STAGES
from experiments.stage_cache import StageCache, stage_key
from g2sf_jax import data, detector, features, io, memory_bank, sharding, synthesis, synthetic_data
from g2sf_jax.fusion import dataset as fusion_dataset
from g2sf_jax.fusion import train as fusion_train

log = logging.getLogger('g2sf')
DATASET_SCOPE = '_dataset'


# Raised when a stage's code starts computing something else from the same inputs, so that work directories made
# by older code redo the stage instead of mixing old and new results. features 2: FPFH rescaled, coreset without a
# projection up.
STAGE_VERSIONS = {'features': 2, 'fusion_data': 1}


def run(config: ml_collections.ConfigDict) -> dict:
  """Runs the selected stages; returns the results table (`report.results_dict`) when `evaluate` ran."""
  runner = Runner(config)
  return runner.run()


class Runner:
  """Holds one run's config, work directory, device mesh and stage markers."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.workdir = Path(config.workdir).absolute()
    self.workdir.mkdir(parents=True, exist_ok=True)
    _log_to(self.workdir / 'run.log')
    self.stages = _selected_stages(config.stages)
    self.rows = detector.rows_of(config)
    self.classes = data.resolve_classes(config.dataset, config.classes or self._default_classes())
    self.cache = StageCache(self.workdir)
    self.mesh = sharding.make_mesh()
    self._backbones = None
    self._save_config()

  def _default_classes(self) -> str:
    return self.config.synthetic.classes if self.config.dataset == 'synthetic' else ''

  def _save_config(self) -> None:
    """config.json: what `Detector.load` and `experiments.predict` rebuild the run from (absolute paths)."""
    c = ml_collections.ConfigDict(self.config.to_dict())
    for name in c.checkpoints:
      c.checkpoints[name] = str(Path(c.checkpoints[name]).absolute())
    c.workdir = str(self.workdir)
    with io.atomic_write(self.workdir / 'config.json', 'w') as f:
      f.write(c.to_json(indent=1, sort_keys=True))

  def run(self) -> dict:
    c = self.config
    log.info('run: dataset %s, classes %s, stages %s, rows %s, workdir %s', c.dataset, ','.join(self.classes),
             ','.join(self.stages), ','.join(self.rows), self.workdir)
    if 'prepare' in self.stages:
      self.prepare()
    for name in self.classes:
      if 'features' in self.stages:
        self.features(name)
      if 'FUS' in self.rows:
        if 'fusion_data' in self.stages:
          self.fusion_data(name)
        if 'train' in self.stages:
          self.train(name)
    if 'evaluate' not in self.stages:
      return {}
    results = [self.evaluate(name) for name in self.classes]
    out = report.write_report(self.workdir / 'report', results, title=f'g2sf-jax · {c.dataset} · {c.method}')
    log.info('report: %s', out)
    return report.results_dict(results)

  # Keys: each stage's inputs, upstream keys included, and the stage's code version (STAGE_VERSIONS).

  def _key(self, stage: str, name: str) -> str:
    c = self.config
    if stage == 'prepare':
      raw = (c.synthetic.to_dict(), c.seed) if c.dataset == 'synthetic' else c.raw_dir
      return stage_key('prepare', c.dataset, raw, data.VERSION, name)
    if stage == 'features':
      rgb, point = self.backbones()  # first, as it may convert shipped weights whose checkpoint meta is keyed below
      return stage_key('features', STAGE_VERSIONS['features'], self._key('prepare', name), c.method, c.modalities,
                       features.describe_backbone(rgb), features.describe_backbone(point), c.point_mae.to_dict(),
                       c.memory_bank.to_dict(), c.seed, self._checkpoint_meta())
    if stage == 'fusion_data':
      return stage_key('fusion_data', STAGE_VERSIONS['fusion_data'], self._key('features', name),
                       c.synthesis.to_dict(), c.seed, self.classes)
    if stage == 'train':
      training = {k: v for k, v in c.g2sf.to_dict().items() if k != 'scoring_mode'}  # inference-only
      return stage_key('train', self._key('fusion_data', name), training, c.seed)
    if stage == 'evaluate':
      upstream = self._key('train', name) if 'FUS' in self.rows else self._key('features', name)
      return stage_key('evaluate', upstream, c.scoring.to_dict(), c.metrics.to_dict(), c.g2sf.scoring_mode)
    raise KeyError(stage)

  def _checkpoint_meta(self) -> dict:
    """What the converted backbone checkpoints were made from, so new weights invalidate the features."""
    out = {}
    mods = detector.modalities(self.config)
    for field, mod in (('rgb_backbone', 'rgb'), ('point_backbone', 'xyz')):
      name = self.config[field]
      meta = Path(self.config.checkpoints.get(name, '') or '/nonexistent') / 'g2sf_meta.json'
      if mod in mods and meta.is_file():
        out[name] = json.loads(meta.read_text())
    return out

  def _up_to_date(self, stage: str, name: str) -> bool:
    done = self.cache.is_done(stage, name, self._key(stage, name))
    if done:
      log.info('%s %s: up to date', stage, name)
    return done

  def _require(self, stage: str, name: str) -> None:
    if not self.cache.is_done(stage, name, self._key(stage, name)):
      raise FileNotFoundError(
          f'{self.workdir / name}: the {stage!r} stage has no up-to-date output for class {name!r}; run it first: '
          f'your experiments.run command with --config.classes={name} --config.stages={stage}')

  # Stages.

  def prepare(self) -> None:
    c = self.config
    raw_dir = Path(c.raw_dir) if c.raw_dir else None
    if c.dataset == 'synthetic':
      raw_dir = raw_dir or self.workdir / 'raw'
      key = stage_key('generate', c.synthetic.to_dict(), c.seed)
      if not self.cache.is_done('generate', DATASET_SCOPE, key):
        log.info('prepare: generating the synthetic dataset in %s', raw_dir)
        synthetic_data.generate(raw_dir, classes=c.synthetic.classes.split(','), n_train=c.synthetic.n_train,
                                n_test=c.synthetic.n_test, size=c.synthetic.size, seed=c.seed,
                                modalities=c.synthetic.modalities)
        self.cache.mark_done('generate', DATASET_SCOPE, key)
    elif raw_dir is None:
      raise ValueError(f'config.raw_dir is empty: set it to your extracted {c.dataset} download, e.g. '
                       f'--config.raw_dir=/data/{c.dataset}')
    import tensorflow_datasets as tfds  # Heavy: only this stage needs it directly.
    tfds.disable_progress_bar()
    for name in tqdm(self.classes, desc='prepare', unit='class'):
      key = self._key('prepare', name)
      if self.cache.is_done('prepare', name, key):
        continue
      result = data.prepare(c.dataset, raw_dir, self.workdir / 'data', [name])[name]
      for problem in result['problems']:
        log.warning('prepare %s: %s', name, problem)
      self.cache.mark_done('prepare', name, key, result)
    for name in self.classes:
      self._check_modalities(name)

  def _check_modalities(self, name: str) -> None:
    """The config's modalities must be in the prepared data (an RGB-only set cannot run rgb+xyz)."""
    have = data.available_modalities(self.config.dataset, self.workdir / 'data', name)
    missing = [m for m in detector.modalities(self.config) if m not in have]
    if missing:
      raise ValueError(f'config.modalities={self.config.modalities!r}, but class {name!r} has no {missing[0]} files '
                       f'in {self.workdir / "data"}; run with --config.modalities={"+".join(have)}')

  def backbones(self):
    if self._backbones is None:
      self._backbones = detector.make_backbones(self.config)
    return self._backbones

  def _features(self, name: str, split: str, samples) -> dict[str, np.ndarray]:
    rgb, point = self.backbones()
    extra = {'checkpoints': self._checkpoint_meta(), 'point_mae': self.config.point_mae.to_dict()}
    bar = tqdm(total=len(samples), desc=f'{name} {split} features', unit='img')
    feats = features.cached_extract(self.workdir / name / 'features' / split, rgb, point, samples,
                                    self.config.batch_size, extra_key=extra, log=log.debug, progress=bar.update)
    bar.close()
    return feats

  def features(self, name: str) -> None:
    if self._up_to_date('features', name):
      return
    self._require('prepare', name)
    key = self._key('features', name)
    c = self.config
    train = data.load_split(c.dataset, self.workdir / 'data', name, 'train')
    feats = self._features(name, 'train', train)
    stats = None
    if c.method == 'btf':
      stats = {m: memory_bank.Normaliser.fit(feats[m].reshape(-1, feats[m].shape[-1])) for m in ('img', 'pcd')}
      stats = {m: (s.mean, s.std) for m, s in stats.items()}
    rows = detector.bank_features(c, feats.get('img'), feats.get('pcd'), stats)
    del feats
    banks = {}
    for modality, bank in rows.items():
      log.info('features %s: %s bank %s → coreset of %.0f%%', name, modality, bank.shape,
               100 * c.memory_bank.coreset_fraction)
      banks[modality] = memory_bank.build(bank, normalise=modality == 'img', fraction=c.memory_bank.coreset_fraction,
                                          eps=c.memory_bank.coreset_eps, key=_key(c, name, 'coreset', modality),
                                          fp16=c.memory_bank.coreset_fp16)
    memory_bank.save(self.workdir / name / 'banks', banks, {'btf_stats': stats, 'class': name})
    self.cache.mark_done('features', name, key, {m: list(b.coreset.shape) for m, b in banks.items()})

  def fusion_data(self, name: str) -> None:
    if self._up_to_date('fusion_data', name):
      return
    key = self._key('fusion_data', name)
    self._require('features', name)
    c = self.config
    banks, _ = memory_bank.load(self.workdir / name / 'banks')
    train_full = data.load_split_full(c.dataset, self.workdir / 'data', name, 'train')
    sources, load_source = self._anomaly_sources()
    rgb, point = self.backbones()
    bar = tqdm(total=c.synthesis.num_anomalies, desc=f'{name} fusion data', unit='img')

    seed = zlib.crc32(f'{c.seed}/{name}'.encode())

    def make_chunk(indices: np.ndarray) -> dict[str, np.ndarray]:
      """Synthetic samples (seed, i) → SPEC §4.2.8 resizing → normalised IMG and raw PCD features."""
      made = [synthesis.synthesize_indexed(train_full, load_source, sources, name, c.dataset, seed, int(i))
              for i in indices]
      feats = features.extract(rgb, point, [{'rgb': data.resize_rgb(m['rgb']), 'xyz': data.resize_xyz(m['xyz'])}
                                            for m in made], c.batch_size)
      bar.update(len(indices))
      return {'img': banks['img'].normaliser(feats['img']), 'pcd': feats['pcd'],
              'mask': np.stack([data.resize_mask(m['mask']) for m in made])}

    fused = fusion_dataset.build(_fresh_dir(self.workdir / name / 'fusion_data', key), c.synthesis.num_anomalies,
                                 make_chunk,
                                 (banks['img'].coreset, banks['pcd'].coreset), chunk_size=c.batch_size,
                                 mesh=self.mesh)
    bar.close()
    info = {'rows': int(len(fused.label)), 'anomalous': int(np.sum(fused.label))}
    log.info('fusion_data %s: %d patches, %d anomalous', name, info['rows'], info['anomalous'])
    self.cache.mark_done('fusion_data', name, key, info)

  def _anomaly_sources(self):
    """SPEC §4.2: `num_sources` preprocessed training clouds per class, pooled over the run's classes.

    Returns (source names 'class/split/…', load(i) → xyz [S, S, 3]); the list is saved as anomaly_sources.json.
    """
    c = self.config
    splits = {name: data.load_split_full(c.dataset, self.workdir / 'data', name, 'train') for name in self.classes}
    names = {name: [f'{name}/{s["name"]}' for s in split] for name, split in splits.items()}
    count = min([c.synthesis.num_sources] + [len(v) for v in names.values()])
    sources = synthesis.select_anomaly_sources(names, count, c.seed)
    with io.atomic_write(self.workdir / 'anomaly_sources.json', 'w') as f:
      json.dump(sources, f, indent=1)
    where = {n: (name, i) for name, ns in names.items() for i, n in enumerate(ns)}

    def load(i: int) -> np.ndarray:
      name, row = where[sources[i]]
      return splits[name][row]['xyz']

    return sources, load

  def train(self, name: str) -> None:
    if self._up_to_date('train', name):
      return
    key = self._key('train', name)
    self._require('fusion_data', name)
    banks, _ = memory_bank.load(self.workdir / name / 'banks')
    fused = fusion_dataset.load(self.workdir / name / 'fusion_data')
    out_dir = _fresh_dir(self.workdir / name / 'fuser', key)
    bar = tqdm(total=self.config.g2sf.epochs, desc=f'{name} LSPN', unit='epoch')

    def on_epoch_end(epoch: int, metrics: dict) -> None:
      bar.n = epoch + 1
      bar.set_postfix({k: f'{v:.3g}' for k, v in metrics.items() if k in ('loss', 'val', 'val_auroc')})
      log.info('train %s epoch %d: %s', name, epoch, json.dumps({k: round(float(v), 5) for k, v in metrics.items()}))

    state = fusion_train.train(self.config, fused, (banks['img'].coreset, banks['pcd'].coreset), out_dir,
                               _key(self.config, name, 'train'), mesh=self.mesh, on_epoch_end=on_epoch_end)
    bar.close()
    self.cache.mark_done('train', name, key, {'best_epoch': state.epoch, 'best_val': state.best_val,
                                               'mu': np.asarray(state.mu).tolist()})

  def evaluate(self, name: str) -> report.ClassResult:
    c = self.config
    key = self._key('evaluate', name)
    path = self.workdir / name / 'evaluation.npz'
    if not (self.cache.is_done('evaluate', name, key) and path.is_file()):
      self._require('features', name)
      if 'FUS' in self.rows:
        self._require('train', name)
      det = detector.Detector.load(self.workdir, name, with_backbones=False)
      test = data.load_split(c.dataset, self.workdir / 'data', name, 'test')
      feats = self._features(name, 'test', test)
      scores = []
      for start in tqdm(range(0, len(test), c.batch_size), desc=f'{name} scoring', unit='batch'):
        stop = start + c.batch_size
        scores += det.score_features(_slice(feats.get('img'), start, stop), _slice(feats.get('pcd'), start, stop))
      arrays = {'labels': np.array([s['label'] for s in test]), 'masks': np.stack([s['mask'] for s in test]),
                'names': np.array([s['name'] for s in test])}
      for row in self.rows:
        arrays[f'score_{row}'] = np.array([s.image[row] for s in scores], np.float32)
        arrays[f'map_{row}'] = np.stack([s.maps[row] for s in scores]).astype(np.float32)
      io.save_npz_atomic(path, **arrays)
      self.cache.mark_done('evaluate', name, key)
    return self._class_result(name, path)

  def _class_result(self, name: str, path: Path) -> report.ClassResult:
    c = self.config
    with np.load(path) as z:
      arrays = {k: z[k] for k in z.files}
    rows = {row: report.RowResult.compute(arrays['labels'], arrays[f'score_{row}'], arrays['masks'],
                                          arrays[f'map_{row}'], c.metrics.aupro_limits, c.metrics.aupro_thresholds)
            for row in self.rows}
    map_row = self.rows[-1]
    full = data.load_split_full(c.dataset, self.workdir / 'data', name, 'test')
    images = [report.ImageRecord(str(arrays['names'][i]), _picture224(full[i]), arrays[f'map_{map_row}'][i],
                                 arrays['masks'][i], int(arrays['labels'][i]), float(arrays[f'score_{map_row}'][i]))
              for i in range(len(arrays['labels']))]
    return report.ClassResult(name, rows, images, map_row=map_row)


def _key(config, *path: str) -> jax.Array:
  """The run's PRNG key folded with names (class, stage, modality): explicit and reproducible."""
  key = jax.random.key(config.seed)
  for p in path:
    key = jax.random.fold_in(key, zlib.crc32(p.encode()))
  return key


def _fresh_dir(path: Path, key: str) -> Path:
  """`path`, emptied first when a previous (possibly interrupted) run filled it from other inputs.

  A run with the same inputs keeps what is there, which is how an interrupted stage resumes.
  """
  stamp = path / 'inputs.key'
  if path.exists() and (not stamp.is_file() or stamp.read_text() != key):
    shutil.rmtree(path)
  path.mkdir(parents=True, exist_ok=True)
  if not stamp.is_file():
    stamp.write_text(key)
  return path


def _slice(x: np.ndarray | None, start: int, stop: int) -> np.ndarray | None:
  return None if x is None else x[start:stop]


def _picture224(sample: dict) -> np.ndarray:
  """uint8 [224, 224, 3] to draw the overlays on: the RGB (PIL bicubic, SPEC §1.4), or for 3D-only data the depth
  (z of the valid points, nearer = brighter)."""
  if 'rgb' in sample:
    return np.asarray(Image.fromarray(sample['rgb']).resize((224, 224), Image.BICUBIC))
  xyz = data.resize_xyz(sample['xyz'])
  valid = data.valid_mask(xyz)
  grey = np.zeros(valid.shape, np.uint8)
  if valid.any():
    z = xyz[..., 2][valid]
    grey[valid] = np.round(255 * (z.max() - z) / max(float(z.max() - z.min()), 1e-12)).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1)


def _selected_stages(stages: str) -> tuple[str, ...]:
  chosen = tuple(s.strip() for s in stages.split(',') if s.strip())
  unknown = [s for s in chosen if s not in STAGES]
  if unknown or not chosen:
    raise ValueError(f'config.stages: unknown {unknown or "empty"}; choose from {",".join(STAGES)}')
  return chosen


def _log_to(path: Path) -> None:
  """INFO to the terminal and to `<workdir>/run.log` (appended: the log of every resumed run)."""
  root = logging.getLogger('g2sf')
  root.setLevel(logging.INFO)
  root.propagate = False  # absl's handler would print every line a second time
  if not any(isinstance(h, logging.FileHandler) and h.baseFilename == str(path) for h in root.handlers):
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
    root.addHandler(handler)
  if not any(type(h) is logging.StreamHandler for h in root.handlers):
    stream = logging.StreamHandler()
    stream.setFormatter(logging.Formatter('%(message)s'))
    root.addHandler(stream)
