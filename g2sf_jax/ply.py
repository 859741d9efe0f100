"""Point clouds with per-point anomaly scores as binary PLY files (Open3D, CloudCompare and MeshLab read them).

Each vertex has x, y, z (float32, the scanner's coordinates), red, green, blue (uint8, the score through a colour
map) and `anomaly` (float32, the normalised score: 0.5 at the calibrated threshold). The header's first comment
marks files g2sf-jax wrote, so that a later call replaces only those.
"""
import os
from pathlib import Path

import numpy as np

from g2sf_jax import io

MARK = 'g2sf-jax anomaly cloud'


def colours(scores: np.ndarray) -> np.ndarray:
  """Normalised scores in [0, 1] → uint8 RGB [N, 3] (matplotlib's 'inferno': dark for good, bright for defect)."""
  from matplotlib import colormaps
  return (colormaps['inferno'](np.clip(scores, 0, 1))[:, :3] * 255 + 0.5).astype(np.uint8)


def write(path: str | os.PathLike, points: np.ndarray, scores: np.ndarray, comment: str = '') -> Path:
  """Writes `points [N, 3]` with `scores [N]` atomically."""
  points = np.asarray(points, np.float32)
  scores = np.asarray(scores, np.float32)
  if points.ndim != 2 or points.shape[1] != 3 or scores.shape != (len(points),):
    raise ValueError(f'{path}: expected points [N, 3] and scores [N], got {points.shape} and {scores.shape}')
  vertex = np.empty(len(points), [('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('red', 'u1'), ('green', 'u1'),
                                  ('blue', 'u1'), ('anomaly', '<f4')])
  vertex['x'], vertex['y'], vertex['z'] = points.T
  vertex['red'], vertex['green'], vertex['blue'] = colours(scores).T
  vertex['anomaly'] = scores
  lines = ['ply', 'format binary_little_endian 1.0', f'comment {MARK}']
  lines += [f'comment {line}' for line in comment.splitlines() if line]
  lines += [f'element vertex {len(points)}', 'property float x', 'property float y', 'property float z',
            'property uchar red', 'property uchar green', 'property uchar blue', 'property float anomaly',
            'end_header']
  with io.atomic_write(path) as f:
    f.write(('\n'.join(lines) + '\n').encode('ascii'))
    f.write(vertex.tobytes())
  return Path(path)


def is_ours(path: str | os.PathLike) -> bool:
  """Whether `path` is a PLY file this module wrote (its header carries the mark)."""
  try:
    with open(path, 'rb') as f:
      head = f.read(200)
  except OSError:
    return False
  return head.startswith(b'ply\n') and f'comment {MARK}\n'.encode() in head


def read(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """(points [N, 3], scores [N]) of a file `write` made (for tests and tools)."""
  data = Path(path).read_bytes()
  end = data.index(b'end_header\n') + len(b'end_header\n')
  header = data[:end].decode('ascii').splitlines()
  count = int(next(line for line in header if line.startswith('element vertex')).split()[-1])
  vertex = np.frombuffer(data[end:], [('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('red', 'u1'), ('green', 'u1'),
                                      ('blue', 'u1'), ('anomaly', '<f4')], count=count)
  return np.stack([vertex['x'], vertex['y'], vertex['z']], -1), vertex['anomaly'].copy()
