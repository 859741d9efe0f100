"""The TFDS builder that every `datasets/<name>/<name>_dataset_builder.py` subclasses with its kind.

All the work is the kind's (`g2sf_jax.data.kind.DatasetKind`): this class only lists the raw class, stores each
entry's `Stored` arrays as array_record and records the class's modalities and problems in `metadata.json`.
Each entry's preprocessing runs in one of `workers` processes (set by `prepared.prepare`), in the listing's order.
"""
import functools
import zlib
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from g2sf_jax import io, parallel
from g2sf_jax.data import kind, prepared


def class_configs(classes) -> list[tfds.core.BuilderConfig]:
  """One builder config per class, so a single class can be prepared."""
  return [tfds.core.BuilderConfig(name=c) for c in classes]


class KindBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Subclasses set `KIND` (a `DatasetKind`), `name`, `BUILDER_CONFIGS` and `MANUAL_DOWNLOAD_INSTRUCTIONS`."""

  KIND: kind.DatasetKind
  workers = 1
  max_pixels = io.MAX_PIXELS
  holdout = 0.2   # of the training scans, for a class without validation/ (`prepared.prepare`)
  seed = 0
  clean = True
  VERSION = tfds.core.Version(prepared.VERSION)
  RELEASE_NOTES = {prepared.VERSION: 'Reference preprocessing (algorithms.md §1.2/§1.3) through g2sf_jax.data.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=prepared.tfds_features(),
                                 disable_shuffling=True,
                                 metadata=tfds.core.MetadataDict(problems=[], modalities=[], splits={},
                                                                 validation_source='', holdout=[]))

  def _split_generators(self, dl_manager):
    listing = self.KIND.list_class(Path(dl_manager.manual_dir) / self.builder_config.name)
    splits = holdout_split(listing.splits, self.holdout, self.seed, self.builder_config.name)
    self.info.metadata['modalities'] = list(listing.modalities)
    self.info.metadata['problems'].extend(listing.problems)
    self.info.metadata['splits'] = {split: len(entries) for split, entries in splits.items()}
    self.info.metadata['validation_source'] = ('validation' if listing.splits.get('validation')
                                               else 'holdout' if splits.get('validation') else '')
    if self.info.metadata['validation_source'] == 'holdout':
      self.info.metadata['holdout'] = [e.name for e in splits['validation']]
    return {split: self._generate_examples(entries, split) for split, entries in splits.items()}

  def _generate_examples(self, entries, split: str):
    with parallel.Workers(self.workers) as pool:
      load = functools.partial(self.KIND.load_entry, keep_orig=split == 'train', max_pixels=self.max_pixels,
                               clean=self.clean)
      for entry, stored in zip(entries, pool.map(load, entries)):
        self.info.metadata['problems'].extend(f'{entry.name}: {p}' for p in stored.problems)
        yield entry.name, dict(stored.arrays(), label=int(entry.defect != 'good'), defect=entry.defect,
                               name=entry.name, problems=list(stored.problems))


def holdout_split(splits: dict[str, list], fraction: float, seed: int, class_name: str) -> dict[str, list]:
  """`splits` with a `validation` split: the raw one, or else `fraction` of the training entries (at least one,
  leaving at least one to train on), drawn with `seed` and the class name and taken out of `train`."""
  if splits.get('validation') or fraction <= 0 or len(splits['train']) < 2:
    return dict(splits)
  train = splits['train']
  count = min(max(1, round(fraction * len(train))), len(train) - 1)
  rng = np.random.default_rng([seed, zlib.crc32(class_name.encode())])
  held = set(rng.choice(len(train), count, replace=False).tolist())
  return dict(splits, train=[e for i, e in enumerate(train) if i not in held],
              validation=[e for i, e in enumerate(train) if i in held])
