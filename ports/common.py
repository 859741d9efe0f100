"""Shared pieces of the PyTorch → Flax weight ports: safe loading, hashing, key/shape validation, family detection.

A port reads a `.pth` with `torch.load(weights_only=True)` (no code from the file runs), checks every key and shape
against a table, names the model family when the file is the wrong one, and writes the Flax tree only when the whole
conversion succeeded (`g2sf_jax.checkpoints.save` is atomic).
"""
import argparse
import hashlib
import os
import pickle
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from g2sf_jax import checkpoints, home
from g2sf_jax.errors import MissingInputError, UserError

# SHA-256 of official releases we know. The FB DINO ViT-B/8 file's hash is not known here, so it is reported as
# "not a known official file" (informational, not an error).
KNOWN_FILES = {
    '27ded932bb0a2625d5a8eb006df199b2578598c774aee6d86b985300b6a5fd20':
        'Point-MAE ShapeNet pretrain (pretrain.pth, official release)',
}


class CheckpointError(UserError, ValueError):
  """The source file cannot be converted; the message names the file and what was expected."""


class Entry(NamedTuple):
  """One PyTorch tensor: its shape, where it goes in the Flax tree, and how to re-lay it out."""
  shape: tuple[int, ...]
  path: tuple[str, ...]
  transform: Callable[[np.ndarray], np.ndarray]


def keep(w: np.ndarray) -> np.ndarray:
  return w


def linear(w: np.ndarray) -> np.ndarray:
  """Linear [out, in] → Dense kernel [in, out] (algorithms.md §2.6)."""
  return w.T


def conv1x1(w: np.ndarray) -> np.ndarray:
  """Conv1d k=1 [out, in, 1] → Dense kernel [in, out] (algorithms.md §2.6)."""
  return w[:, :, 0].T


def conv2d(w: np.ndarray) -> np.ndarray:
  """Conv2d OIHW → HWIO (algorithms.md §2.6)."""
  return w.transpose(2, 3, 1, 0)


def sha256(path: str | os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def describe_source(path: str | os.PathLike) -> dict[str, str]:
  """Provenance for the converted checkpoint's meta: file, hash, and whether it is a known official release."""
  digest = sha256(path)
  return {'source': str(Path(path).absolute()), 'sha256': digest,
          'known_file': KNOWN_FILES.get(digest, 'not a known official file')}


def load_torch(path: str | os.PathLike) -> Any:
  """`torch.load(path, map_location='cpu', weights_only=True)`, with errors that say what went wrong."""
  import torch  # Only the ports need torch; keep `import ports.common` cheap for everything else.
  path = Path(path)
  if not path.is_file():
    raise MissingInputError(f'checkpoint file not found: {path}')
  try:
    # A DINO full training checkpoint stores its command line as an argparse.Namespace: plain data, allowed.
    with torch.serialization.safe_globals([argparse.Namespace]):
      return torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    refused = re.search(r'unsupported (?:global: )?GLOBAL (\S+)', str(e), re.IGNORECASE)
    if refused:
      raise CheckpointError(
          f'{path}: refused by torch.load(weights_only=True): the file contains the Python object '
          f'{refused.group(1)}, not only tensors. Export a plain state dict of tensors from a trusted '
          'environment instead.') from None
    detail = re.search(r'WeightsUnpickler error:\s*(\S[^\n]*)', str(e))  # torch's first line is generic advice
    raise CheckpointError(f'{path}: not a readable PyTorch checkpoint (corrupt, truncated or not a .pth)'
                          f'{": " + detail.group(1) if detail else ""}') from None
  except Exception as e:  # torch's unpicklers raise many types (RuntimeError, EOFError, IndexError, …) on junk.
    raise CheckpointError(f'{path}: not a readable PyTorch checkpoint (corrupt, truncated or not a .pth): '
                          f'{_first_line(e)}') from None


def _first_line(e: Exception) -> str:
  return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def tensor_dict(obj: Any, path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
  """Checks `obj` is a flat name → tensor mapping and returns float32/int NumPy copies."""
  import torch
  if not isinstance(obj, Mapping):
    raise CheckpointError(f'{path}: expected {what} to be a dict of tensors, got {type(obj).__name__}')
  out = {}
  for key, value in obj.items():
    if not isinstance(key, str) or not isinstance(value, torch.Tensor):
      raise CheckpointError(f'{path}: expected {what} to map names to tensors; entry {key!r} is '
                            f'{type(value).__name__}')
    value = value.detach().cpu()
    if value.is_floating_point() and value.dtype not in (torch.float16, torch.float32, torch.float64):
      value = value.float()  # bfloat16 (and other types NumPy lacks): exact in float32
    out[key] = value.numpy()
  return out


def strip_prefixes(state: Mapping[str, np.ndarray], prefixes: tuple[str, ...]) -> dict[str, np.ndarray]:
  """Removes any of `prefixes` from the front of each key, repeatedly (e.g. `module.MAE_encoder.`)."""
  out = {}
  for key, value in state.items():
    stripped = True
    while stripped:
      stripped = False
      for prefix in prefixes:
        if key.startswith(prefix):
          key, stripped = key[len(prefix):], True
    out[key] = value
  return out


_VIT_SIZES = {192: 'Ti', 384: 'S', 768: 'B', 1024: 'L', 1280: 'H', 1536: 'g'}


def vit_size(dim: int) -> str:
  return _VIT_SIZES.get(dim, f'(width {dim})')


def identify(state: Mapping[str, Any]) -> str | None:
  """Names the model family of a state dict (keys already stripped of wrapper prefixes), or None if unknown."""
  keys = set(state)
  if any('MAE_encoder.' in k or 'MAE_decoder.' in k for k in keys) or 'encoder.first_conv.0.weight' in keys:
    return 'a Point-MAE checkpoint'
  patch = state.get('patch_embed.proj.weight')
  if patch is not None and len(np.shape(patch)) == 4:
    dim, _, p, _ = np.shape(patch)
    size = vit_size(dim)
    if any('.ls1.' in k for k in keys) or 'register_tokens' in keys or p == 14:
      regs = ' with registers' if 'register_tokens' in keys else ''
      return f'a DINOv2 ViT-{size}/{p}{regs} checkpoint'
    depth = len({k.split('.')[1] for k in keys if k.startswith('blocks.')})
    return f'a ViT-{size}/{p} checkpoint ({depth} blocks)'
  return None


def check_entries(state: Mapping[str, np.ndarray], table: Mapping[str, Entry],
                  ignorable: Callable[[str], bool], path: str | os.PathLike, family: str) -> None:
  """Raises one CheckpointError listing every missing key, wrong shape and unexpected key that matters."""
  missing = [k for k in table if k not in state]
  wrong = [f'{k}: expected {list(e.shape)}, got {list(np.shape(state[k]))}'
           for k, e in table.items() if k in state and tuple(np.shape(state[k])) != e.shape]
  unexpected = [k for k in state if k not in table and not ignorable(k)]
  if not (missing or wrong or unexpected):
    return
  lines = [f'{path}: not a valid {family} state dict:']
  if missing:
    lines.append(f'  {len(missing)} missing keys: {", ".join(missing)}')
  if wrong:
    lines.append(f'  {len(wrong)} wrong shapes: ' + '; '.join(wrong))
  if unexpected:
    lines.append(f'  {len(unexpected)} unexpected keys: {", ".join(unexpected)}')
  raise CheckpointError('\n'.join(lines))


def convert(state: Mapping[str, np.ndarray], table: Mapping[str, Entry]) -> dict[str, Any]:
  """Builds the nested Flax variables tree from a validated state dict."""
  tree: dict[str, Any] = {}
  for key, entry in table.items():
    node = tree
    for name in entry.path[:-1]:
      node = node.setdefault(name, {})
    node[entry.path[-1]] = np.ascontiguousarray(entry.transform(state[key]), dtype=np.float32)
  return tree


def parse_args(argv: list[str] | None, description: str, model: str) -> argparse.Namespace:
  """SRC and OUT_DIR; OUT_DIR defaults to where the configs look (`g2sf_jax.home.checkpoint_dir(model)`)."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('src', help='the PyTorch .pth file (read only)')
  parser.add_argument('out_dir', nargs='?', default=str(home.checkpoint_dir(model)),
                      help='the converted checkpoint directory to write (default: %(default)s, the configs\' '
                           'default; $G2SF_HOME moves it)')
  return parser.parse_args(argv)


def save_converted(out_dir: str | os.PathLike, tree: Any, meta: dict, num_tensors: int) -> Path:
  """Writes the converted tree atomically (nothing on failure) and says what was written from what."""
  out = checkpoints.save(out_dir, tree, meta, replaces={'model': meta['model']})
  print(f'wrote {out} ({num_tensors} tensors; source sha256 {meta["sha256"]}: {meta["known_file"]})')
  return out


def run_cli(main: Callable[[], int]) -> None:
  """`python -m ports.X`: conversion errors become one `error: …` line and exit status 1."""
  try:
    sys.exit(main())
  except UserError as e:
    sys.exit(f'error: {e}')
