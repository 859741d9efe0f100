"""Converts the Point-MAE ShapeNet pretrain weights to the Flax `PointMAE` encoder (algorithms.md §2.2, §2.6).

  python -m ports.point_mae pretrain.pth [OUT_DIR]   (default: $G2SF_HOME/checkpoints/point_mae)

Loading follows `PointTransformer.load_model_from_ckpt`: take `ckpt['base_model']` (or a flat state dict), strip
`module.`, `MAE_encoder.` and `base_model.`, and ignore the decoder, `decoder_pos_embed`, `mask_token` and
`increase_dim` entries. BatchNorm running statistics go to the `batch_stats` collection (used only with
`point_mae.batchnorm='running_stats'`, algorithms.md §2.3). Nothing is written unless every key and shape checks out.
"""
from collections.abc import Mapping
from typing import Any

import numpy as np

from ports import common

COMMAND = 'python -m ports.point_mae SRC.pth OUT_DIR'
FAMILY = 'Point-MAE encoder (width 384, 12 blocks)'
_IGNORED_PREFIXES = ('MAE_decoder.', 'decoder_pos_embed.', 'mask_token', 'increase_dim.')


def table(dim: int = 384, depth: int = 12, mlp_hidden: int = 1536) -> dict[str, common.Entry]:
  """PyTorch key (after stripping) → (shape, Flax path, re-layout), algorithms.md §2.6."""
  p, s = ('params',), ('batch_stats',)
  t = {}
  for seq, convs in (('first_conv', ((0, 128, 3), (3, 256, 128))), ('second_conv', ((0, 512, 512), (3, dim, 512)))):
    for index, out_f, in_f in convs:
      t[f'encoder.{seq}.{index}.weight'] = common.Entry((out_f, in_f, 1), p + ('encoder', f'{seq}_{index}', 'kernel'),
                                                        common.conv1x1)
      t[f'encoder.{seq}.{index}.bias'] = common.Entry((out_f,), p + ('encoder', f'{seq}_{index}', 'bias'), common.keep)
    bn, c = f'{seq}_1', convs[0][1]
    for torch_name, collection, flax_name in (('weight', p, 'scale'), ('bias', p, 'bias'),
                                              ('running_mean', s, 'mean'), ('running_var', s, 'var')):
      t[f'encoder.{seq}.1.{torch_name}'] = common.Entry((c,), collection + ('encoder', bn, flax_name), common.keep)
  for index, out_f, in_f in ((0, 128, 3), (2, dim, 128)):
    t[f'pos_embed.{index}.weight'] = common.Entry((out_f, in_f), p + (f'pos_embed_{index}', 'kernel'), common.linear)
    t[f'pos_embed.{index}.bias'] = common.Entry((out_f,), p + (f'pos_embed_{index}', 'bias'), common.keep)
  for i in range(depth):
    k, b = f'blocks.blocks.{i}', p + (f'blocks_{i}',)
    for norm in ('norm1', 'norm2'):
      t[f'{k}.{norm}.weight'] = common.Entry((dim,), b + (norm, 'scale'), common.keep)
      t[f'{k}.{norm}.bias'] = common.Entry((dim,), b + (norm, 'bias'), common.keep)
    t[f'{k}.attn.qkv.weight'] = common.Entry((3 * dim, dim), b + ('attn', 'qkv', 'kernel'), common.linear)
    for name, module, out_f, in_f in (('attn.proj', ('attn', 'proj'), dim, dim),
                                      ('mlp.fc1', ('mlp', 'fc1'), mlp_hidden, dim),
                                      ('mlp.fc2', ('mlp', 'fc2'), dim, mlp_hidden)):
      t[f'{k}.{name}.weight'] = common.Entry((out_f, in_f), b + module + ('kernel',), common.linear)
      t[f'{k}.{name}.bias'] = common.Entry((out_f,), b + module + ('bias',), common.keep)
  t['norm.weight'] = common.Entry((dim,), p + ('norm', 'scale'), common.keep)
  t['norm.bias'] = common.Entry((dim,), p + ('norm', 'bias'), common.keep)
  return t


def _ignorable(key: str) -> bool:
  return key.startswith(_IGNORED_PREFIXES) or key.endswith('num_batches_tracked')


def unwrap(obj: Any, path: str) -> dict[str, np.ndarray]:
  """The encoder state dict: `ckpt['base_model']` (the official files; also `model` or `state_dict`, as other
  training scripts save it, or the file itself when flat), prefixes stripped."""
  for wrapper in ('base_model', 'model', 'state_dict'):
    if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
      obj = obj[wrapper]
      break
  return common.strip_prefixes(common.tensor_dict(obj, path, 'the Point-MAE state dict'),
                               ('module.', 'MAE_encoder.', 'base_model.'))


def convert_state(state: Mapping[str, np.ndarray], path: str) -> dict[str, Any]:
  """Validates a stripped state dict and returns the Flax variables `{'params': …, 'batch_stats': …}`."""
  family = common.identify(state)
  if family is not None and 'Point-MAE' not in family:
    raise common.CheckpointError(
        f'{path}: this is {family}; ports.point_mae converts the {FAMILY} (Point-MAE pretrain.pth). '
        f'{"Use: python -m ports.dino_vit SRC.pth OUT_DIR" if "DINOv2" not in family else ""}'.rstrip())
  t = table()
  common.check_entries(state, t, _ignorable, path, FAMILY)
  return common.convert(state, t)


def main(argv: list[str] | None = None) -> int:
  args = common.parse_args(argv, __doc__.splitlines()[0], 'point_mae')
  state = unwrap(common.load_torch(args.src), args.src)
  tree = convert_state(state, args.src)
  meta = {'converter': 'ports.point_mae', 'model': 'point_mae', **common.describe_source(args.src)}
  common.save_converted(args.out_dir, tree, meta, len(table()))
  return 0


if __name__ == '__main__':
  common.run_cli(main)
