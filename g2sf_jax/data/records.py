"""Reads prepared splits (array_record files of serialized examples) with the project's own schema.

TFDS's readers rebuild a dataset's features from its `features.json`, importing whatever Python class that file
names: a planted or edited file would run code. This reader never looks at `features.json`: it opens the split's
array_record shards itself, parses each record as a protocol-buffer `Example` (data only) and decodes the fields
of `SCHEMA`, the one schema every builder writes (`prepared.tfds_features`). Anything else in a record is an error.
"""
import bisect
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from g2sf_jax.errors import CorruptOutputError

# field → (dtype, rank) for arrays stored as zlib bytes plus their shape; 'int' and 'text' for scalars; 'texts'
# for a list of strings.
SCHEMA = {
    'rgb': (np.uint8, 3), 'xyz': (np.float32, 3), 'xyz_orig': (np.float32, 3), 'mask': (np.uint8, 2),
    'has_mask': 'int', 'raw_height': 'int', 'raw_width': 'int', 'label': 'int', 'defect': 'text', 'name': 'text',
    'problems': 'texts',
}


def shards(folder: Path, dataset: str, split: str) -> list[Path]:
  """The array_record files of one split, in shard order."""
  return sorted(Path(folder).glob(f'{dataset}-{split}.array_record-*-of-*'))


class Split(Sequence):
  """Random access to one prepared split: `split[i]` → `{field: value}` as in `SCHEMA` (arrays decoded), or only
  `fields` of it (`split.get(i, fields)`) so that reading labels does not decompress images."""

  def __init__(self, folder: Path, dataset: str, split: str):
    from array_record.python import array_record_module  # the reader of TFDS's file format; no TFDS needed
    self.paths = shards(folder, dataset, split)
    if not self.paths:
      raise CorruptOutputError(f'{folder}: no {dataset}-{split}.array_record-* files (the prepared {split} split)')
    self._readers = []
    for path in self.paths:
      try:
        self._readers.append(array_record_module.ArrayRecordReader(str(path), 'readahead_buffer_size:0'))
      except Exception as e:  # the C++ reader raises RuntimeError / ValueError for a damaged file
        raise CorruptOutputError(f'{path}: not a readable array_record file ({e})') from None
    self._starts = [0]
    for reader in self._readers:
      self._starts.append(self._starts[-1] + reader.num_records())

  def __len__(self) -> int:
    return self._starts[-1]

  def get(self, index: int, fields: Sequence[str] = tuple(SCHEMA)) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(f'record {index} out of range for {len(self)} records')
    shard = bisect.bisect_right(self._starts, index) - 1
    try:
      raw = self._readers[shard].read([index - self._starts[shard]])[0]
    except Exception as e:
      raise CorruptOutputError(f'{self.paths[shard]}: record {index} cannot be read ({e})') from None
    return decode(raw, fields, f'{self.paths[shard]} record {index}')

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    return self.get(index if index >= 0 else index + len(self))


def decode(raw: bytes, fields: Sequence[str], where: str) -> dict:
  """One serialized `Example` → the requested fields of `SCHEMA`."""
  from tensorflow_datasets.proto import tf_example_pb2  # generated protocol-buffer classes: parsing only
  try:
    feature = tf_example_pb2.Example.FromString(raw).features.feature
  except Exception as e:  # protobuf's DecodeError
    raise CorruptOutputError(f'{where}: not a serialized example ({e})') from None
  unknown = set(feature) - {f'{k}/{p}' for k, v in SCHEMA.items() if isinstance(v, tuple) for p in ('value', 'shape')}
  unknown -= {k for k, v in SCHEMA.items() if not isinstance(v, tuple)}
  if unknown:
    raise CorruptOutputError(f'{where}: fields {sorted(unknown)} are not in the prepared schema')
  out = {}
  for name in fields:
    kind = SCHEMA[name]
    try:
      if isinstance(kind, tuple):
        dtype, rank = kind
        shape = tuple(int(x) for x in feature[f'{name}/shape'].int64_list.value)
        data = zlib.decompress(feature[f'{name}/value'].bytes_list.value[0])
        if len(shape) != rank:
          raise ValueError(f'shape {shape} is not of rank {rank}')
        out[name] = np.frombuffer(bytearray(data), dtype).reshape(shape)  # writable, as callers expect
      elif kind == 'int':
        out[name] = int(feature[name].int64_list.value[0])
      elif kind == 'text':
        out[name] = feature[name].bytes_list.value[0].decode()
      else:
        out[name] = [v.decode() for v in feature[name].bytes_list.value]
    except (KeyError, IndexError, ValueError, zlib.error) as e:
      raise CorruptOutputError(f'{where}: field {name!r} is damaged ({e.__class__.__name__}: {e})') from None
  return out
