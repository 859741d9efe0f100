"""Converts the FB DINO ViT-B/8 backbone weights to the Flax `VisionTransformer` (algorithms.md §2.1, §2.6).

  python -m ports.dino_vit dino_vitbase8_pretrain.pth [OUT_DIR]   (default: $G2SF_HOME/checkpoints/dino_vit_b8)

Accepts the flat backbone state dict (timm/FB names), a `{'model'|'state_dict': …}` wrapper, or a DINO full training
checkpoint (the `teacher` backbone is used, `backbone.`/`module.` prefixes stripped, the `head.*` projection head
ignored). Nothing is written unless every key and shape checks out.
"""
import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from ports import common

COMMAND = 'python -m ports.dino_vit SRC.pth OUT_DIR'


@dataclasses.dataclass(frozen=True)
class VitArch:
  """The `models.vit.VisionTransformer` fields a state dict must fit; the default is DINO ViT-B/8 at 224."""
  img_size: int = 224
  patch_size: int = 8
  dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0

  @property
  def name(self) -> str:
    return f'DINO ViT (width {self.dim}, patch {self.patch_size}, {self.depth} blocks)'


VIT_B8 = VitArch()


def table(arch: VitArch = VIT_B8) -> dict[str, common.Entry]:
  """PyTorch key → (shape, Flax path, re-layout) for every tensor the model needs (algorithms.md §2.6)."""
  d, hidden = arch.dim, int(arch.dim * arch.mlp_ratio)
  tokens = 1 + (arch.img_size // arch.patch_size) ** 2
  p = ('params',)
  t = {
      'cls_token': common.Entry((1, 1, d), p + ('cls_token',), common.keep),
      'pos_embed': common.Entry((1, tokens, d), p + ('pos_embed',), common.keep),
      'patch_embed.proj.weight': common.Entry((d, 3, arch.patch_size, arch.patch_size),
                                              p + ('patch_embed', 'kernel'), common.conv2d),
      'patch_embed.proj.bias': common.Entry((d,), p + ('patch_embed', 'bias'), common.keep),
      'norm.weight': common.Entry((d,), p + ('norm', 'scale'), common.keep),
      'norm.bias': common.Entry((d,), p + ('norm', 'bias'), common.keep),
  }
  for i in range(arch.depth):
    b = p + (f'blocks_{i}',)
    for norm in ('norm1', 'norm2'):
      t[f'blocks.{i}.{norm}.weight'] = common.Entry((d,), b + (norm, 'scale'), common.keep)
      t[f'blocks.{i}.{norm}.bias'] = common.Entry((d,), b + (norm, 'bias'), common.keep)
    for name, module, out_f, in_f in (('attn.qkv', ('attn', 'qkv'), 3 * d, d), ('attn.proj', ('attn', 'proj'), d, d),
                                      ('mlp.fc1', ('mlp', 'fc1'), hidden, d), ('mlp.fc2', ('mlp', 'fc2'), d, hidden)):
      t[f'blocks.{i}.{name}.weight'] = common.Entry((out_f, in_f), b + module + ('kernel',), common.linear)
      t[f'blocks.{i}.{name}.bias'] = common.Entry((out_f,), b + module + ('bias',), common.keep)
  return t


def unwrap(obj: Any, path: str) -> dict[str, np.ndarray]:
  """The backbone state dict inside whatever container the file holds."""
  if isinstance(obj, Mapping) and 'base_model' in obj:
    raise common.CheckpointError(
        f"{path}: this is a Point-MAE checkpoint (it has ckpt['base_model']); ports.dino_vit converts DINO ViT-B/8. "
        'Use: python -m ports.point_mae SRC.pth OUT_DIR')
  for wrapper in ('teacher', 'model', 'state_dict'):
    if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
      obj = obj[wrapper]
      break
  return common.strip_prefixes(common.tensor_dict(obj, path, 'the DINO state dict'), ('module.', 'backbone.'))


def convert_state(state: Mapping[str, np.ndarray], path: str, arch: VitArch = VIT_B8) -> dict[str, Any]:
  """Validates a (stripped) state dict against `arch` and returns the Flax variables `{'params': …}`."""
  family = common.identify(state)
  expected = f'a ViT-{common.vit_size(arch.dim)}/{arch.patch_size} '
  if family is not None and not family.startswith(expected):
    hint = ' Use: python -m ports.point_mae SRC.pth OUT_DIR' if 'Point-MAE' in family else ''
    raise common.CheckpointError(
        f'{path}: this is {family}; ports.dino_vit converts {arch.name}, the DINO (v1) ViT-B/8 that M3DM/G²SF '
        f'use (dino_vitbase8_pretrain.pth).{hint}')
  t = table(arch)
  common.check_entries(state, t, lambda k: k.startswith('head.'), path, arch.name)
  return common.convert(state, t)


def main(argv: list[str] | None = None) -> int:
  args = common.parse_args(argv, __doc__.splitlines()[0], 'dino_vit_b8')
  state = unwrap(common.load_torch(args.src), args.src)
  tree = convert_state(state, args.src)
  meta = {'converter': 'ports.dino_vit', 'model': 'dino_vit_b8', 'arch': dataclasses.asdict(VIT_B8),
          **common.describe_source(args.src)}
  common.save_converted(args.out_dir, tree, meta, len(table()))
  return 0


if __name__ == '__main__':
  common.run_cli(main)
