"""Checks a whole run config before the first stage: a typo must fail in a second, not after an hour of training.

`validate(config)` raises `ConfigError` naming the first bad field, its value and what it accepts (a missing raw
folder or converted checkpoint is named too); the chosen method then checks its own sections (`Method.check`).
`unknown_override(...)` explains a `--config.x=…` that names
no field, with the closest ones.
"""
import dataclasses
import difflib
from pathlib import Path

import ml_collections

from g2sf_jax import backbones, calibration, data, fpfh, memory_bank, methods
from g2sf_jax.config_fields import boolean, choice, get, number, numbers_list
from g2sf_jax.data import kind
from g2sf_jax.errors import ConfigError, DataError
from g2sf_jax.models import point_mae


def validate(config: ml_collections.ConfigDict) -> None:
  """Every field the shared stages read, then the method's own (`Method.check`)."""
  choice(config, 'dataset', data.KINDS)
  if config.dataset != 'synthetic' and not config.raw_dir:
    raise ConfigError(f'config.raw_dir is empty: set it to your extracted {config.dataset} download, e.g. '
                      f'--config.raw_dir=/data/{config.dataset}')
  if config.raw_dir and not Path(config.raw_dir).is_dir():
    raise DataError(f'config.raw_dir = {config.raw_dir!r}: folder not found (expected the extracted '
                    f'{config.dataset} download)')
  classes(config, 'classes', config.dataset)
  choice(config, 'method', methods.REGISTRY)
  mods = _modalities(config, 'modalities')
  choice(config, 'rgb_backbone', backbones.RGB_BACKBONES)
  choice(config, 'point_backbone', backbones.POINT_BACKBONES)
  number(config, 'seed', integer=True)
  number(config, 'batch_size', 1, integer=True)
  number(config, 'max_pixels', 64 * 64, integer=True)
  boolean(config, 'clean_scans')
  number(config, 'unit_mm', 0, low_open=True)
  number(config, 'train.max_samples', 0, integer=True)
  choice(config, 'calibration.rule', calibration.RULES)
  number(config, 'calibration.quantile', 0, 1)
  number(config, 'calibration.margin', 0)
  number(config, 'calibration.holdout', 0, 1, high_open=True)
  number(config, 'workers', 0, integer=True)
  _distributed(config)
  choice(config, 'point_mae.batchnorm', point_mae.BATCHNORM_MODES)
  choice(config, 'point_mae.drop_path', point_mae.DROP_PATH_MODES)
  number(config, 'point_mae.num_group', 1, integer=True)
  number(config, 'point_mae.group_size', 1, integer=True)
  number(config, 'memory_bank.coreset_fraction', 0, 1, low_open=True)
  number(config, 'memory_bank.coreset_eps', 0, 1, low_open=True, high_open=True)
  number(config, 'memory_bank.num_anchors', 3, integer=True)
  choice(config, 'memory_bank.coreset_mode', memory_bank.GREEDY_MODES)
  choice(config, 'scoring.blur', memory_bank.BLUR_MODES)
  if get(config, 'metrics.aupro_thresholds') not in ('exact', 0):
    try:
      number(config, 'metrics.aupro_thresholds', 2, integer=True)
    except ConfigError as e:
      raise ConfigError(f"{e}, or 'exact' for the full curve") from None
  numbers_list(config, 'metrics.aupro_limits', low=0, high=1)
  if 0 in get(config, 'metrics.aupro_limits'):
    raise ConfigError('config.metrics.aupro_limits: expected FPR limits in (0, 1], got 0')
  fields = {f.name for f in dataclasses.fields(fpfh.FpfhParams)}
  unknown = set(get(config, 'fpfh')) - fields
  if unknown:
    raise ConfigError(f'config.fpfh: unknown fields {sorted(unknown)}; expected some of {sorted(fields)}')
  fpfh.FpfhParams(**dict(config.fpfh))
  if config.dataset == 'synthetic':
    number(config, 'synthetic.n_train', 1, integer=True)
    number(config, 'synthetic.n_test', 2, integer=True)  # a good and an anomalous sample: AUROCs need both
    number(config, 'synthetic.size', 64, integer=True)
    number(config, 'synthetic.fov', 0.01)
    classes(config, 'synthetic.classes', 'synthetic')
    generated = _modalities(config, 'synthetic.modalities')
    if not set(mods) <= set(generated):
      raise ConfigError(f'config.modalities = {config.modalities!r} needs files that config.synthetic.modalities = '
                        f'{config.synthetic.modalities!r} does not generate')
  backbones.check_available(config)
  methods.get(config.method).check(config)


def classes(config: ml_collections.ConfigDict, field: str, dataset: str) -> tuple[str, ...]:
  """The classes a config field names ('' = all of `dataset`, or of those found in the raw folder for a kind that
  takes any class folder); an unknown one is a ConfigError naming the field."""
  raw_dir = config.raw_dir if dataset == config.dataset and config.raw_dir else None
  try:
    return data.resolve_classes(dataset, get(config, field) or None, raw_dir)
  except DataError as e:
    raise ConfigError(f'config.{field}: {e}') from None


def _modalities(config: ml_collections.ConfigDict, field: str) -> tuple[str, ...]:
  try:
    return kind.parse_modalities(get(config, field))
  except ValueError as e:
    raise ConfigError(f'config.{field}: {e}') from None


def all_fields(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Every dotted field of `config` (sections and leaves)."""
  out = []
  for name, value in config.items():
    out.append(prefix + name)
    if isinstance(value, ml_collections.ConfigDict):
      out += all_fields(value, f'{prefix}{name}.')
  return out


def unknown_override(config: ml_collections.ConfigDict, field: str) -> str | None:
  """None if `field` (dotted) is a field of `config`, else a message with the closest fields."""
  fields = all_fields(config)
  if field in fields:
    return None
  close = difflib.get_close_matches(field, fields, n=3, cutoff=0.6)
  section = field.rsplit('.', 1)[0] if '.' in field else ''
  siblings = sorted(f for f in fields if f.rsplit('.', 1)[0] == section and '.' in f) if section in fields else []
  hint = f'; did you mean {" or ".join(map(repr, close))}?' if close else ''
  listing = f' Fields of {section}: {", ".join(siblings)}.' if siblings else ''
  return f'--config.{field}: no such config field{hint}{listing}'


def _distributed(config: ml_collections.ConfigDict) -> None:
  d = get(config, 'distributed')
  number(config, 'distributed.num_processes', 0, integer=True)
  number(config, 'distributed.process_id', -1, integer=True)
  number(config, 'distributed.heartbeat_timeout_s', 1, integer=True)
  if not d.coordinator and d.num_processes == 0 and d.process_id == -1:
    return
  host, _, port = str(d.coordinator).rpartition(':')
  if not host or not port.isdigit():
    raise ConfigError(f'config.distributed.coordinator = {d.coordinator!r}: expected host:port of process 0')
  if d.num_processes < 1 or not 0 <= d.process_id < d.num_processes:
    raise ConfigError(f'config.distributed: num_processes={d.num_processes}, process_id={d.process_id}: expected '
                      '0 ≤ process_id < num_processes with the coordinator set')
