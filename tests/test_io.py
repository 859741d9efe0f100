"""Validated readers name the bad file; atomic writers never leave a half-written file."""
import os
import re
import stat
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from g2sf_jax import io
from g2sf_jax.errors import DataError


def _xyz(h=6, w=5, seed=0):
  return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def test_xyz_tiff_round_trip(tmp_path):
  xyz = _xyz()
  io.write_xyz_tiff(tmp_path / 'a.tiff', xyz)
  out = io.read_xyz_tiff(tmp_path / 'a.tiff')
  assert out.dtype == np.float32 and np.array_equal(out, xyz)
  assert np.array_equal(tifffile.imread(tmp_path / 'a.tiff'), xyz)  # a plain TIFF, readable by anyone


@pytest.mark.parametrize('array, what', [
    (np.zeros((6, 5, 3), np.float64), 'dtype float64'),
    (np.zeros((6, 5, 4), np.float32), 'shape (6, 5, 4)'),
    (np.zeros((6, 5), np.float32), 'shape (6, 5)'),
])
def test_xyz_tiff_rejects_wrong_dtype_or_channels(tmp_path, array, what):
  path = tmp_path / 'bad.tiff'
  tifffile.imwrite(path, array)
  with pytest.raises(io.DataError, match=re.escape(what)) as e:
    io.read_xyz_tiff(path)
  assert str(path) in str(e.value) and 'float32 [H, W, 3]' in str(e.value)


def test_xyz_tiff_rejects_truncated_and_missing(tmp_path):
  path = tmp_path / 'cut.tiff'
  io.write_xyz_tiff(path, _xyz(64, 64))
  path.write_bytes(path.read_bytes()[:1000])
  with pytest.raises(io.DataError, match='cannot decode TIFF') as e:
    io.read_xyz_tiff(path)
  assert str(path) in str(e.value)
  with pytest.raises(io.DataError, match='file not found'):
    io.read_xyz_tiff(tmp_path / 'nothing.tiff')
  assert issubclass(io.DataError, ValueError)


def test_rgb_png_converts_like_pil(tmp_path):
  gray = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
  Image.fromarray(gray).save(tmp_path / 'g.png')
  rgb = io.read_rgb_png(tmp_path / 'g.png')
  assert rgb.shape == (5, 6, 3) and rgb.dtype == np.uint8
  assert np.array_equal(rgb, np.repeat(gray[..., None], 3, -1))


@pytest.mark.parametrize('reader', [io.read_rgb_png, io.read_mask_png])
def test_png_readers_reject_corrupt_and_truncated(tmp_path, reader):
  garbage = tmp_path / 'garbage.png'
  garbage.write_bytes(b'\x89PNG\r\n\x1a\n' + os.urandom(200))
  truncated = tmp_path / 'truncated.png'
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(truncated)
  truncated.write_bytes(truncated.read_bytes()[:300])
  for path in (garbage, truncated):
    with pytest.raises(io.DataError, match='cannot decode image') as e:
      reader(path)
    assert str(path) in str(e.value)


def test_mask_png_is_pil_luminance(tmp_path):
  rgb = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0]]], np.uint8)
  Image.fromarray(rgb).save(tmp_path / 'm.png')
  # ITU-R 601-2 luma, as PIL documents for convert('L'): L = (299 R + 587 G + 114 B) / 1000, rounded.
  assert io.read_mask_png(tmp_path / 'm.png').tolist() == [[255, 0, 76, 150]]


def test_depth_png16(tmp_path):
  depth = np.array([[0, 1, 65535], [1000, 20000, 40000]], np.uint16)
  io.write_png(tmp_path / 'd.png', depth)
  assert np.array_equal(io.read_depth_png16(tmp_path / 'd.png'), depth)
  io.write_png(tmp_path / 'rgb.png', np.zeros((2, 3, 3), np.uint8))
  with pytest.raises(io.DataError, match='16-bit') as e:
    io.read_depth_png16(tmp_path / 'rgb.png')
  assert 'rgb.png' in str(e.value)


def test_atomic_write_replaces_or_keeps_old(tmp_path):
  path = tmp_path / 'sub' / 'f.txt'
  with io.atomic_write(path, 'w') as f:
    f.write('old')
  with pytest.raises(RuntimeError):
    with io.atomic_write(path, 'w') as f:
      f.write('half of the new')
      raise RuntimeError('crash mid-write')
  assert path.read_text() == 'old'
  assert sorted(p.name for p in path.parent.iterdir()) == ['f.txt']  # no temporary file left behind
  with io.atomic_write(path, 'w') as f:
    f.write('new')
  assert path.read_text() == 'new'


def test_save_npz_atomic_exact_path(tmp_path):
  path = tmp_path / 'cache.data'
  io.save_npz_atomic(path, a=np.arange(3), b=np.eye(2, dtype=np.float32))
  assert sorted(p.name for p in tmp_path.iterdir()) == ['cache.data']
  with np.load(path) as z:
    assert np.array_equal(z['a'], np.arange(3)) and np.array_equal(z['b'], np.eye(2))


def test_atomic_dir_replaces_only_what_it_recognises(tmp_path):
  target = tmp_path / 'out'
  with io.atomic_dir(target) as tmp:
    (tmp / 'a').write_text('1')
  assert (target / 'a').read_text() == '1'
  with pytest.raises(FileExistsError, match='not an output this command replaces'):
    with io.atomic_dir(target) as tmp:
      raise AssertionError('the body must not run')
  with pytest.raises(RuntimeError):
    with io.atomic_dir(target, may_replace=lambda p: True) as tmp:
      (tmp / 'b').write_text('2')
      raise RuntimeError('interrupted')
  assert [p.name for p in target.iterdir()] == ['a']  # the failed replacement left the old folder as it was
  with io.atomic_dir(target, may_replace=lambda p: (p / 'a').is_file()) as tmp:
    (tmp / 'b').write_text('2')
  assert [p.name for p in target.iterdir()] == ['b'] and [p.name for p in tmp_path.iterdir()] == ['out']


def test_rgb_png_rejects_deeper_than_8_bits(tmp_path):
  """A 16-bit PNG would be clipped to 255 by `.convert('RGB')`: an error that names the file and its mode."""
  Image.fromarray(np.full((4, 4), 300, np.uint16)).save(tmp_path / 'deep.png')
  with pytest.raises(io.DataError, match=r'deep.png: image mode I;16 .*expected an 8-bit RGB image'):
    io.read_rgb_png(tmp_path / 'deep.png')
  Image.fromarray(np.full((4, 4, 4), 9, np.uint8), 'RGBA').save(tmp_path / 'rgba.png')
  np.testing.assert_array_equal(io.read_rgb_png(tmp_path / 'rgba.png'), np.full((4, 4, 3), 9, np.uint8))


@pytest.mark.parametrize('umask', [0o022, 0o027])
def test_atomic_outputs_get_the_umask_permissions(tmp_path, umask):
  """mkstemp's 0600 and mkdtemp's 0700 would make outputs unreadable to the rest of a shared machine."""
  old = os.umask(umask)
  try:
    with io.atomic_write(tmp_path / 'f.txt', 'w') as f:
      f.write('x')
    with io.atomic_dir(tmp_path / 'd') as d:
      (d / 'inside').write_text('y')
  finally:
    os.umask(old)
  assert stat.S_IMODE(os.stat(tmp_path / 'f.txt').st_mode) == 0o666 & ~umask
  assert stat.S_IMODE(os.stat(tmp_path / 'd').st_mode) == 0o777 & ~umask


def test_png_text_marks(tmp_path):
  io.write_png(tmp_path / 'm.png', np.zeros((2, 2), np.uint8), {'Software': 'g2sf-jax predict'})
  assert io.png_text(tmp_path / 'm.png') == {'Software': 'g2sf-jax predict'}
  io.write_png(tmp_path / 'plain.png', np.zeros((2, 2), np.uint8))
  (tmp_path / 'notes.txt').write_text('not an image')
  assert io.png_text(tmp_path / 'plain.png') == {} and io.png_text(tmp_path / 'notes.txt') == {}


def test_link_tree_shares_files_until_one_copy_is_rewritten(tmp_path):
  (tmp_path / 'a' / 'sub').mkdir(parents=True)
  io.save_npz_atomic(tmp_path / 'a' / 'sub' / 'x.npz', v=np.arange(3))
  (tmp_path / 'a' / 'meta.json').write_text('{}')
  io.link_tree(tmp_path / 'a', tmp_path / 'b')
  assert os.stat(tmp_path / 'b' / 'sub' / 'x.npz').st_ino == os.stat(tmp_path / 'a' / 'sub' / 'x.npz').st_ino
  io.save_npz_atomic(tmp_path / 'b' / 'sub' / 'x.npz', v=np.zeros(2))  # a writer replaces, never writes into
  with np.load(tmp_path / 'a' / 'sub' / 'x.npz') as z:
    np.testing.assert_array_equal(z['v'], np.arange(3))
  assert (tmp_path / 'b' / 'meta.json').read_text() == '{}'


def _png_claiming(path, height, width):
  """A small 8×8 PNG whose header is rewritten to claim `height`×`width` pixels (CRC fixed): a decompression bomb
  without the bytes."""
  io.write_png(path, np.zeros((8, 8, 3), np.uint8))
  data = bytearray(path.read_bytes())
  at = data.index(b'IHDR')
  data[at + 4:at + 12] = struct.pack('>II', width, height)
  data[at + 17:at + 21] = struct.pack('>I', zlib.crc32(bytes(data[at:at + 17])))
  path.write_bytes(bytes(data))


def _tiff_claiming(path, height, width):
  """A small float TIFF whose ImageLength/ImageWidth tags are rewritten to claim `height`×`width` pixels."""
  io.write_xyz_tiff(path, np.ones((8, 8, 3), np.float32))
  with tifffile.TiffFile(path) as tif:
    tags = tif.pages[0].tags
    where = {name: (tags[name].valueoffset, tags[name].dtype) for name in ('ImageLength', 'ImageWidth')}
  data = bytearray(path.read_bytes())
  for name, value in (('ImageLength', height), ('ImageWidth', width)):
    offset, dtype = where[name]
    data[offset:offset + (2 if dtype == 3 else 4)] = struct.pack('<H' if dtype == 3 else '<I', value)
  path.write_bytes(bytes(data))


def test_a_header_claiming_too_many_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
  _png_claiming(tmp_path / 'bomb.png', 10000, 10000)
  _tiff_claiming(tmp_path / 'bomb.tiff', 10000, 10000)
  decoded = []
  monkeypatch.setattr(Image.Image, 'load', lambda self: decoded.append(self))
  monkeypatch.setattr(tifffile.TiffFile, 'asarray', lambda self, *a, **k: decoded.append(self))
  with pytest.raises(DataError, match=r'bomb.png: declares 10000×10000 pixels, more than the 64,000,000 allowed'):
    io.read_rgb_png(tmp_path / 'bomb.png')
  with pytest.raises(DataError, match=r'bomb.png: declares 10000×10000 pixels'):
    io.read_mask_png(tmp_path / 'bomb.png')
  with pytest.raises(DataError, match=r'bomb.tiff: declares 10000×10000 pixels'):
    io.read_xyz_tiff(tmp_path / 'bomb.tiff')
  with pytest.raises(DataError, match=r'declares 10000×10000 pixels, more than the 99,999,999'):
    io.read_xyz_tiff(tmp_path / 'bomb.tiff', max_pixels=10_000 ** 2 - 1)
  assert not decoded
  monkeypatch.undo()
  io.write_png(tmp_path / 'ok.png', np.zeros((300, 300, 3), np.uint8))  # the cap is configurable both ways
  with pytest.raises(DataError, match='declares 300×300 pixels, more than the 80,000 allowed'):
    io.read_rgb_png(tmp_path / 'ok.png', max_pixels=80_000)
  assert io.read_rgb_png(tmp_path / 'ok.png', max_pixels=90_000).shape == (300, 300, 3)


def test_float_tiff_carries_its_mark(tmp_path):
  io.write_float_tiff(tmp_path / 'm.tiff', np.eye(3, dtype=np.float32), 'made by me')
  assert io.tiff_description(tmp_path / 'm.tiff') == 'made by me'
  np.testing.assert_array_equal(tifffile.imread(tmp_path / 'm.tiff'), np.eye(3, dtype=np.float32))
  assert io.tiff_description(tmp_path / 'nothing.tiff') == ''
