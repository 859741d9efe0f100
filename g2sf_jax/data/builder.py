"""The TFDS builder that every `datasets/<name>/<name>_dataset_builder.py` subclasses with its kind.

All the work is the kind's (`g2sf_jax.data.kind.DatasetKind`): this class only lists the raw class, stores each
entry's `Stored` arrays as array_record and records the class's modalities and problems in `metadata.json`.
Each entry's preprocessing runs in one of `workers` processes (set by `prepared.prepare`), in the listing's order.
"""
import functools
from pathlib import Path

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
  VERSION = tfds.core.Version(prepared.VERSION)
  RELEASE_NOTES = {prepared.VERSION: 'Reference preprocessing (algorithms.md §1.2/§1.3) through g2sf_jax.data.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=prepared.tfds_features(),
                                 disable_shuffling=True, metadata=tfds.core.MetadataDict(problems=[], modalities=[]))

  def _split_generators(self, dl_manager):
    listing = self.KIND.list_class(Path(dl_manager.manual_dir) / self.builder_config.name)
    self.info.metadata['modalities'] = list(listing.modalities)
    self.info.metadata['problems'].extend(listing.problems)
    return {split: self._generate_examples(entries, split) for split, entries in listing.splits.items()}

  def _generate_examples(self, entries, split: str):
    with parallel.Workers(self.workers) as pool:
      load = functools.partial(self.KIND.load_entry, keep_orig=split == 'train', max_pixels=self.max_pixels)
      for entry, stored in zip(entries, pool.map(load, entries)):
        self.info.metadata['problems'].extend(f'{entry.name}: {p}' for p in stored.problems)
        yield entry.name, dict(stored.arrays(), label=int(entry.defect != 'good'), defect=entry.defect,
                               name=entry.name, problems=list(stored.problems))
