"""Validated readers and atomic writers shared by every stage.

Readers turn any unreadable or malformed file into a `DataError` that names the file and what was expected, so a
bad download fails at the file that is wrong instead of deep inside a model. Writers replace files atomically: a
crash leaves either the old file or the new one, never half of one.
"""
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

import numpy as np
import tifffile
from PIL import Image, PngImagePlugin

from g2sf_jax.errors import DataError, OutputExistsError

# A sample's two modalities, in this order everywhere: the RGB image (PNG) and the organised cloud (xyz TIFF).
MODALITIES = ('rgb', 'xyz')
# The most pixels a raw image or cloud may declare (64 Mpx, 8000²; MVTec 3D-AD's scans are at most 800², Eyecandies'
# 512²): a small file claiming more is refused before it is decoded (a 1 MB TIFF can claim gigabytes).
MAX_PIXELS = 64_000_000


def _check_size(path: Path, pixels: int, max_pixels: int, shape) -> None:
  if pixels > max_pixels:
    raise DataError(f'{path}: declares {"×".join(map(str, shape))} pixels, more than the {max_pixels:,} allowed '
                    '(max_pixels); not decoded')


def _open_image(path: Path, expected: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
  if not path.is_file():
    raise DataError(f'{path}: file not found (expected {expected})')
  try:
    image = Image.open(path)
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files.
    raise DataError(f'{path}: cannot decode image (expected {expected}): {e}') from e
  _check_size(path, image.height * image.width, max_pixels, (image.height, image.width))  # the header only
  try:
    image.load()  # PIL decodes lazily; force it so truncation shows up here.
  except Exception as e:
    raise DataError(f'{path}: cannot decode image (expected {expected}): {e}') from e
  return image


def read_xyz_tiff(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Reads an organised point cloud: float32 [H, W, 3], (0, 0, 0) at missing pixels (algorithms.md §1.1)."""
  path = Path(path)
  expected = 'an organised point cloud TIFF, float32 [H, W, 3]'
  if not path.is_file():
    raise DataError(f'{path}: file not found (expected {expected})')
  try:
    with tifffile.TiffFile(path) as tif:
      shape = tif.series[0].shape  # from the header: checked before anything is decoded
      _check_size(path, int(np.prod(shape[:2])), max_pixels, shape[:2])
      xyz = tif.asarray()
  except DataError:
    raise
  except Exception as e:  # tifffile raises TiffFileError, ValueError, struct.error... for broken files.
    raise DataError(f'{path}: cannot decode TIFF (expected {expected}): {e}') from e
  if xyz.ndim != 3 or xyz.shape[-1] != 3:
    raise DataError(f'{path}: shape {xyz.shape}, expected {expected}')
  if xyz.dtype != np.float32:
    raise DataError(f'{path}: dtype {xyz.dtype}, expected {expected}')
  return xyz


# Greyscale PIL modes deeper than 8 bits: `.convert('RGB')` would clip them to 255, not rescale them (PIL opens a
# 16-bit RGB PNG as 8-bit RGB, keeping the high bytes, which is right).
_DEEP_MODES = ('I', 'F', 'I;16', 'I;16B', 'I;16L', 'I;16N')


def read_rgb_png(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Reads an 8-bit image as uint8 [H, W, 3] with PIL `.convert('RGB')` (algorithms.md §1.4); grey and RGBA are
  converted."""
  path = Path(path)
  image = _open_image(path, 'an 8-bit RGB image', max_pixels)
  if image.mode in _DEEP_MODES:
    raise DataError(f'{path}: image mode {image.mode} (more than 8 bits per channel), expected an 8-bit RGB image')
  return np.asarray(image.convert('RGB'), dtype=np.uint8)


def read_mask_png(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Reads a ground-truth mask as uint8 [H, W] with PIL `.convert('L')` (algorithms.md §1.4)."""
  path = Path(path)
  image = _open_image(path, 'a single-channel mask image', max_pixels)
  return np.asarray(image.convert('L'), dtype=np.uint8)


def read_depth_png16(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Reads a 16-bit depth PNG (Eyecandies, algorithms.md §1.3) as uint16 [H, W]."""
  path = Path(path)
  image = _open_image(path, 'a 16-bit single-channel depth PNG', max_pixels)
  if image.mode not in ('I;16', 'I;16B', 'I'):
    raise DataError(f'{path}: image mode {image.mode}, expected a 16-bit single-channel depth PNG')
  depth = np.asarray(image)
  if depth.ndim != 2 or depth.min() < 0 or depth.max() > 65535:
    raise DataError(f'{path}: values or shape {depth.shape} outside a 16-bit single-channel depth PNG')
  return depth.astype(np.uint16)


def _umask() -> int:
  """The process's umask, read without changing it where Linux allows (another thread may be creating files)."""
  with contextlib.suppress(OSError, ValueError):
    for line in Path('/proc/self/status').read_text().splitlines():
      if line.startswith('Umask:'):
        return int(line.split()[1], 8)
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = 'wb') -> Iterator[IO]:
  """Yields a file object; on success the content replaces `path` in one `os.replace`.

  The temporary file lives in the same folder (so the rename never crosses file systems) and is removed if the
  body raises. The result gets the permissions of a newly created file (0666 less the umask), not mkstemp's 0600.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  os.close(fd)  # Reopen by name: some writers (tifffile) need a file object with a real `.name`.
  try:
    with open(tmp, mode) as f:
      yield f
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, may_replace: Callable[[Path], bool] = lambda _: False) -> Iterator[Path]:
  """Yields a new, uniquely named folder beside `path`; on success it becomes `path` in one rename.

  An existing `path` is replaced only when `may_replace(path)` recognises it as an earlier output of the same kind
  (e.g. a checkpoint with its marker file); anything else is left alone and FileExistsError is raised before any
  work. On failure the temporary folder is removed and `path` is untouched. The folder gets the permissions of a
  newly created one (0777 less the umask), not mkdtemp's 0700.
  """
  path = Path(path)
  if path.is_symlink():
    raise OutputExistsError(f'{path}: a symbolic link; outputs are never written through one: remove it or choose '
                            'another path')
  if path.exists() and not may_replace(path):
    raise OutputExistsError(f'{path}: exists and is not an output this command replaces; move it away or choose '
                            'another path')
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp'))
  try:
    yield tmp
    os.chmod(tmp, 0o777 & ~_umask())
    if path.exists():
      old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.old'))
      os.replace(path, old)  # onto the empty folder: atomic on POSIX
      os.replace(tmp, path)
      shutil.rmtree(old)
    else:
      os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def link_tree(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
  """A copy of the folder `src` at `dst` whose files are hard links where the file system allows (else copies).

  Instant and free of disk space even for tens of GB, and safe because every writer here replaces a file (the
  atomic writers above) instead of writing into it: a change to one copy never reaches the other.
  """
  def link_or_copy(a: str, b: str) -> None:
    try:
      os.link(a, b)
    except OSError:  # another file system, or links not supported
      shutil.copy2(a, b)
  shutil.copytree(src, dst, copy_function=link_or_copy)
  return Path(dst)


def save_npz_atomic(path: str | os.PathLike, *, compress: bool = True, **arrays: np.ndarray) -> Path:
  """`np.savez_compressed` (or `np.savez`) to exactly `path` (no `.npz` appended), atomically."""
  with atomic_write(path) as f:
    (np.savez_compressed if compress else np.savez)(f, **arrays)
  return Path(path)


def write_xyz_tiff(path: str | os.PathLike, xyz: np.ndarray) -> Path:
  """Writes float32 [H, W, 3] as a TIFF readable by `read_xyz_tiff`, atomically."""
  xyz = np.asarray(xyz)
  if xyz.ndim != 3 or xyz.shape[-1] != 3 or xyz.dtype != np.float32:
    raise ValueError(f'{path}: expected float32 [H, W, 3], got {xyz.dtype} {xyz.shape}')
  with atomic_write(path) as f:
    tifffile.imwrite(f, xyz, photometric='rgb')  # one page, 3 contiguous samples per pixel, like MVTec's files
  return Path(path)


def write_png(path: str | os.PathLike, image: np.ndarray, text: dict[str, str] | None = None) -> Path:
  """Writes uint8 [H, W] or [H, W, 3] (or uint16 [H, W]) as a PNG, atomically; `text` goes into tEXt chunks."""
  image = np.asarray(image)
  if image.dtype not in (np.uint8, np.uint16) or image.ndim not in (2, 3):
    raise ValueError(f'{path}: expected uint8/uint16 [H, W] or uint8 [H, W, 3], got {image.dtype} {image.shape}')
  info = PngImagePlugin.PngInfo()
  for key, value in (text or {}).items():
    info.add_text(key, value)
  with atomic_write(path) as f:
    Image.fromarray(image).save(f, format='PNG', compress_level=1, pnginfo=info)
  return Path(path)


def write_float_tiff(path: str | os.PathLike, image: np.ndarray, description: str) -> Path:
  """Writes float32 [H, W] as a one-page TIFF with `description` as its ImageDescription, atomically."""
  image = np.asarray(image)
  if image.dtype != np.float32 or image.ndim != 2:
    raise ValueError(f'{path}: expected float32 [H, W], got {image.dtype} {image.shape}')
  with atomic_write(path) as f:
    tifffile.imwrite(f, image, description=description, metadata=None)
  return Path(path)


def tiff_description(path: str | os.PathLike) -> str:
  """The ImageDescription of a TIFF's first page; '' for a file that is not a readable TIFF."""
  try:
    with tifffile.TiffFile(path) as tif:
      return tif.pages[0].description or ''
  except Exception:  # not a TIFF at all: nothing of ours
    return ''


def png_text(path: str | os.PathLike) -> dict[str, str]:
  """The tEXt chunks of a PNG; {} for a file that is not a readable PNG."""
  try:
    with Image.open(path) as image:
      return dict(image.text) if image.format == 'PNG' else {}
  except Exception:  # not an image at all: nothing of ours
    return {}
