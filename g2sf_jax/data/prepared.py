"""Prepared data: `prepare` runs the TFDS builders of `datasets/` once per class, `load_split` reads them back.

The builders write array_record files (no TensorFlow needed) with the kind's preprocessing applied once
(`g2sf_jax/data/builder.py`); `load_split` / `load_split_full` read them with random access (`records`, with the
project's own schema: nothing a file on disk names is imported) and apply the algorithms.md
§1.4 transforms (`transforms.model_input`). The builders are loaded by file path because `datasets/` is deliberately not
an importable package (it would shadow Hugging Face's `datasets`).
"""
import functools
import importlib.util
import json
import sys
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from g2sf_jax import data as kinds
from g2sf_jax import io
from g2sf_jax.data import kind, records, transforms
from g2sf_jax.io import DataError
from g2sf_jax.errors import MissingInputError

DATASETS_DIR = Path(__file__).resolve().parents[2] / 'datasets'
VERSION = '1.0.0'


# Preparation.

def tfds_features():
  """The stored schema shared by every builder: full-resolution arrays, zlib-compressed, no TensorFlow needed.

  `xyz_orig` is [0, 0, 3] where it is not stored (test splits, Eyecandies, classes without point clouds); so are
  `rgb` / `xyz` in a class without images / point clouds (`available_modalities`).
  """
  import tensorflow_datasets as tfds  # Heavy; only preparation and loading need it.

  def image(channels, dtype):
    shape = (None, None, channels) if channels else (None, None)
    return tfds.features.Tensor(shape=shape, dtype=dtype, encoding='zlib')

  return tfds.features.FeaturesDict({
      'rgb': image(3, np.uint8),
      'xyz': image(3, np.float32),
      'xyz_orig': image(3, np.float32),
      'mask': image(0, np.uint8),
      'has_mask': tfds.features.Tensor(shape=(), dtype=np.int64),
      'raw_height': tfds.features.Tensor(shape=(), dtype=np.int64),  # the raw files' size, before any padding
      'raw_width': tfds.features.Tensor(shape=(), dtype=np.int64),
      'label': tfds.features.Tensor(shape=(), dtype=np.int64),
      'defect': tfds.features.Text(),
      'name': tfds.features.Text(),
      'problems': tfds.features.Sequence(tfds.features.Text()),
  })


def builder_module(dataset: str):
  """Imports `datasets/<dataset>/<dataset>_dataset_builder.py` by path, once per process."""
  kinds.get(dataset)
  module_name = f'g2sf_tfds_builder_{dataset}'  # No dot: TFDS resolves dotted modules as packages.
  if module_name not in sys.modules:
    path = DATASETS_DIR / dataset / f'{dataset}_dataset_builder.py'
    if not path.is_file():
      raise FileNotFoundError(f'TFDS builder not found: {path} (run from a source checkout of g2sf-jax)')
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[module_name]
      raise
  return sys.modules[module_name]


def prepared_dir(dataset: str, data_dir: str | Path, class_name: str) -> Path:
  """Where TFDS keeps one prepared class: `<data_dir>/<dataset>/<class>/<VERSION>/`."""
  return Path(data_dir) / dataset / class_name / VERSION


def is_prepared(dataset: str, data_dir: str | Path, class_name: str) -> bool:
  return (prepared_dir(dataset, data_dir, class_name) / 'dataset_info.json').is_file()


def prepare(dataset: str, raw_dir: str | Path, data_dir: str | Path,
            classes: str | Sequence[str] | None = None, workers: int = 1,
            max_pixels: int = io.MAX_PIXELS, holdout: float = 0.2, seed: int = 0,
            clean: bool = True) -> dict[str, dict]:
  """Builds the TFDS array_record data of each class from the user's raw download (read only).

  `workers` processes read and clean the samples (`g2sf_jax.parallel`); the stored data is the same for any number.
  A raw file declaring more than `max_pixels` pixels is refused before it is decoded. `clean`: the kind's cleaning
  of the clouds (MVTec 3D-AD's plane removal and clustering), else only the square padding. A class without a
  `validation/` folder gets a `validation` split of `holdout` of its training scans, drawn with `seed` (they are then
  not trained on); its metadata says which (`validation_source`).

  `classes`: None = every class of the dataset (synthetic: every class found in `raw_dir`).
  Returns `{class: {'path', 'built', 'num_examples': {split: n}, 'modalities': (str, ...), 'problems': [str]}}`;
  `modalities` is what the raw class holds (`available_modalities`); `built` is False when the
  class was already prepared (preparation is idempotent and resumable class by class; delete
  `<data_dir>/<dataset>/<class>` to rebuild one). `problems` lists the
  samples that preparation worked around (`preprocessing.Problem`), as `'<sample name>: <kind>: <detail>'`.
  """
  import tensorflow_datasets as tfds  # Heavy; only preparation and loading need it.

  raw_dir = Path(raw_dir)
  if not raw_dir.is_dir():
    raise DataError(f'{raw_dir}: raw {dataset} folder not found (expected one folder per class)')
  if dataset == 'synthetic' and not classes:  # The generated folder holds only the classes asked for.
    classes = [c for c in kinds.get(dataset).classes if (raw_dir / c).is_dir()]
  classes = kinds.resolve_classes(dataset, classes, raw_dir)
  module = builder_module(dataset)
  config = tfds.download.DownloadConfig(manual_dir=str(raw_dir.absolute()),
                                        compute_stats=tfds.download.ComputeStatsMode.SKIP)
  for name in classes:
    if not (raw_dir / name).is_dir():
      raise DataError(f'{raw_dir / name}: class folder not found in the raw {dataset} download')
  report = {}
  for name in classes:
    built = not is_prepared(dataset, data_dir, name)
    listed = name in {c.name for c in module.Builder.BUILDER_CONFIGS}  # else a class found on disk
    builder = module.Builder(config=name if listed else tfds.core.BuilderConfig(name=name),
                             data_dir=str(Path(data_dir).absolute()), file_format='array_record')
    builder.workers, builder.max_pixels, builder.holdout, builder.seed, builder.clean = (workers, max_pixels, holdout,
                                                                                         seed, clean)
    builder.download_and_prepare(download_config=config)
    info = builder.info
    report[name] = dict(path=str(prepared_dir(dataset, data_dir, name)), built=built,
                        num_examples={s: info.splits[s].num_examples for s in info.splits},
                        modalities=available_modalities(dataset, data_dir, name),
                        problems=list(_read_metadata(dataset, data_dir, name).get('problems', [])))
  return report


def _read_metadata(dataset: str, data_dir: str | Path, class_name: str) -> dict:
  path = prepared_dir(dataset, data_dir, class_name) / 'metadata.json'
  return json.loads(path.read_text()) if path.is_file() else {}


def _check_prepared(dataset: str, data_dir: str | Path, class_name: str) -> None:
  kinds.resolve_classes(dataset, [class_name])
  if not is_prepared(dataset, data_dir, class_name):
    raise MissingInputError(
        f'{prepared_dir(dataset, data_dir, class_name)}: {dataset}/{class_name} is not prepared; create it with '
        f'g2sf_jax.data.prepared.prepare({dataset!r}, raw_dir, {str(data_dir)!r}, [{class_name!r}]) '
        '(the `prepare` stage of experiments.run)')


def available_modalities(dataset: str, data_dir: str | Path, class_name: str) -> tuple[str, ...]:
  """('rgb', 'xyz'), ('rgb',) or ('xyz',): what a prepared class holds (MVTec layout: what its raw folders had).

  Eyecandies always has both (xyz comes from depth), and so does a class prepared before single-modality classes
  existed (its metadata has no `modalities`; the builder then required both).
  """
  _check_prepared(dataset, data_dir, class_name)
  stored = _read_metadata(dataset, data_dir, class_name).get('modalities') or io.MODALITIES
  if not set(stored) <= set(io.MODALITIES):
    path = prepared_dir(dataset, data_dir, class_name) / 'metadata.json'
    raise DataError(f'{path}: modalities {stored} are not a subset of {io.MODALITIES}')
  return tuple(m for m in io.MODALITIES if m in stored)


# Loading.

class Subset(Sequence):
  """The samples `indices` of a lazy split, still lazy; `indices` map back to the whole split's rows."""

  def __init__(self, samples: Sequence, indices: Sequence[int]):
    self.samples, self.indices = samples, list(indices)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    return self.samples[self.indices[i]]


def row_of(samples: Sequence, i: int) -> int:
  """The row of the whole prepared split that sample `i` of `samples` (a split or a `Subset` of one) is."""
  return samples.indices[i] if isinstance(samples, Subset) else i


def subset_indices(count: int, max_samples: int, seed: int, class_name: str) -> list[int]:
  """`max_samples` of `count` rows (all when 0 or more), drawn with `seed` and the class name, in their order."""
  if not max_samples or max_samples >= count:
    return list(range(count))
  rng = np.random.default_rng([seed, zlib.crc32(class_name.encode()), 1])
  return sorted(rng.choice(count, max_samples, replace=False).tolist())


class _Samples(Sequence):
  """Random-access view of one prepared split; `transform` runs on each decoded example."""

  def __init__(self, source, transform: Callable[[dict], dict]):
    self._source = source
    self._transform = transform

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    if not -len(self) <= index < len(self):
      raise IndexError(f'sample {index} out of range for {len(self)} samples')
    return self._transform(self._source[index % len(self)])


def _source(dataset: str, data_dir: str | Path, class_name: str, split: str) -> records.Split:
  """The split's records, read with the project's schema (`records`: nothing a file on disk names is imported)."""
  kinds.resolve_classes(dataset, [class_name])
  if split not in kind.SPLITS:
    raise DataError(f'unknown split {split!r}; expected one of {", ".join(kind.SPLITS)}')
  _check_prepared(dataset, data_dir, class_name)
  if split not in splits(dataset, data_dir, class_name):
    raise DataError(f'{prepared_dir(dataset, data_dir, class_name)}: class {class_name!r} has no {split} scans')
  return records.Split(prepared_dir(dataset, data_dir, class_name), dataset, split)


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def splits(dataset: str, data_dir: str | Path, class_name: str) -> dict[str, int]:
  """`{split: number of scans}` of a prepared class (a split the raw class lacks is absent)."""
  _check_prepared(dataset, data_dir, class_name)
  return dict(_read_metadata(dataset, data_dir, class_name).get('splits', {}))


def validation_source(dataset: str, data_dir: str | Path, class_name: str) -> str:
  """'validation' (the raw class's own validation scans) or 'holdout' (a seeded part of its training scans)."""
  _check_prepared(dataset, data_dir, class_name)
  return str(_read_metadata(dataset, data_dir, class_name).get('validation_source', ''))


def _full(example: dict, dataset_kind: kind.DatasetKind, modalities: tuple[str, ...]) -> dict:
  sample = {m: example[m] for m in modalities}
  if 'xyz' in modalities:
    # algorithms.md §4.2.1, rule E: Eyecandies synthesises from the cleaned cloud
    xyz_orig = example['xyz'] if dataset_kind.synthesis == 'eyecandies' else example['xyz_orig']
    sample['xyz_orig'] = xyz_orig if xyz_orig.size else None
  return dict(sample, mask=example['mask'], has_mask=bool(example['has_mask']), label=int(example['label']),
              defect=_text(example['defect']), name=_text(example['name']),
              problems=tuple(_text(p) for p in example['problems']),
              raw_size=(int(example['raw_height']), int(example['raw_width'])))


def stored(sample: dict) -> kind.Stored:
  """A sample of `load_split_full` as the `kind.Stored` preprocessing made of it (what `scoring` takes)."""
  return kind.Stored(sample.get('rgb'), sample.get('xyz'), sample.get('xyz_orig'), sample['mask'],
                     tuple(sample['problems']), raw_size=tuple(sample['raw_size']), has_mask=sample['has_mask'])


def _model_input(example: dict, dataset_kind: kind.DatasetKind, modalities: tuple[str, ...]) -> dict:
  stored = {m: example[m] for m in modalities}
  return dict(transforms.model_input(dict(stored, mask=example['mask']), dataset_kind.mask_rgb_by_xyz),
              has_mask=bool(example['has_mask']), label=int(example['label']), defect=_text(example['defect']),
              name=_text(example['name']))


def _samples(dataset: str, data_dir: str | Path, class_name: str, split: str, transform) -> Sequence[dict]:
  source = _source(dataset, data_dir, class_name, split)
  return _Samples(source, functools.partial(transform, dataset_kind=kinds.get(dataset),
                                            modalities=available_modalities(dataset, data_dir, class_name)))


def labels(dataset: str, data_dir: str | Path, class_name: str, split: str) -> np.ndarray:
  """int64 [N]: the image labels of a prepared split (1 = anomalous), without the load transforms."""
  source = _source(dataset, data_dir, class_name, split)
  return np.array([source.get(i, ('label',))['label'] for i in range(len(source))], np.int64)


def load_split(dataset: str, data_dir: str | Path, class_name: str, split: str) -> Sequence[dict]:
  """Model-ready samples in algorithms.md §1.1 order (test: defect folders sorted, then files sorted).

  Each sample: `rgb` float32 [224,224,3] (ImageNet-normalised), `xyz` float32 [224,224,3], `mask` bool [224,224],
  `label` int, `defect` str, `name` str (e.g. 'test/crack/003'). A class without images has no `rgb` key, one
  without point clouds no `xyz` key (`available_modalities`): a caller that needs it fails with a KeyError.
  """
  return _samples(dataset, data_dir, class_name, split, _model_input)


def load_split_full(dataset: str, data_dir: str | Path, class_name: str, split: str) -> Sequence[dict]:
  """The same samples at stored resolution S (anomaly synthesis, algorithms.md §4.2).

  Each sample: `rgb` uint8 [S,S,3], `xyz` float32 [S,S,3] (preprocessed), `xyz_orig` float32 [S,S,3] (input cloud,
  padded only; = `xyz` for Eyecandies; None for MVTec/synthetic test samples, which do not store it), `mask` uint8
  [S,S], `label`, `defect`, `name`, `problems` (tuple of str). Without images: no `rgb`; without point clouds: no
  `xyz` and no `xyz_orig`.
  """
  return _samples(dataset, data_dir, class_name, split, _full)
