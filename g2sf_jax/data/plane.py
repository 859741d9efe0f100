"""RANSAC plane fit: Open3D 0.20's `PointCloud.segment_plane` estimator in NumPy, seeded by a NumPy generator.

Open3D samples `ransac_n` distinct points per iteration and fits them by least squares. It keeps the plane with
the most inliers (distance < threshold), and among equal counts the lowest summed inlier distance / √count. It
stops early once `log(1 − p) / log(1 − fitness^n)` iterations have run (p = 0.99999999). Then it refits on all
inliers of the best plane. Open3D runs the iterations in parallel threads that share one generator, so its picks
depend on thread timing even when seeded, and the reference leaves it unseeded. Here the same estimator draws
from `np.random.default_rng(seed)` and runs the iterations in order, so a plane is the same on every machine. The
final refit makes the result insensitive to which good sample won: on a scan with a background plane it equals
Open3D's to rounding (tested).
"""
import numpy as np

PROBABILITY = 0.99999999  # Open3D's default
_PLANES_PER_BLOCK = 32    # candidate planes scored against all points at once


def plane_from_points(points: np.ndarray) -> np.ndarray:
  """Least-squares planes of point sets [..., M, 3] -> [..., 4] (a, b, c, d), unit normal; zeros where the points
  do not span a plane. Open3D's formula: the normal from the largest of the covariance's three 2×2 minors."""
  centroid = points.mean(-2)
  r = points - centroid[..., None, :]
  xx, yy, zz = (r[..., 0] ** 2).sum(-1), (r[..., 1] ** 2).sum(-1), (r[..., 2] ** 2).sum(-1)
  xy, xz, yz = (r[..., 0] * r[..., 1]).sum(-1), (r[..., 0] * r[..., 2]).sum(-1), (r[..., 1] * r[..., 2]).sum(-1)
  det_x, det_y, det_z = yy * zz - yz * yz, xx * zz - xz * xz, xx * yy - xy * xy
  use_x = (det_x > det_y) & (det_x > det_z)
  use_y = ~use_x & (det_y > det_z)
  abc = np.where(use_x[..., None], np.stack([det_x, xz * yz - xy * zz, xy * yz - xz * yy], -1),
                 np.where(use_y[..., None], np.stack([xz * yz - xy * zz, det_y, xy * xz - yz * xx], -1),
                          np.stack([xy * yz - xz * yy, xy * xz - yz * xx, det_z], -1)))
  norm = np.linalg.norm(abc, axis=-1, keepdims=True)
  ok = norm > 0
  abc = np.where(ok, abc / np.where(ok, norm, 1), 0)
  d = np.where(ok[..., 0], -(abc * centroid).sum(-1), 0)
  return np.concatenate([abc, d[..., None]], -1)


def _distinct_samples(rng: np.random.Generator, total: int, iterations: int, size: int) -> np.ndarray:
  """[iterations, size] indices into `total` points, distinct within each row: a repeated index is drawn again,
  as Open3D's sampler does (redrawing whole rows would almost never finish when `total` is close to `size`)."""
  samples = rng.integers(0, total, (iterations, size))
  while True:
    order = np.argsort(samples, axis=1, kind='stable')
    ordered = np.take_along_axis(samples, order, axis=1)
    repeat = np.zeros(samples.shape, bool)  # every occurrence after the first of an index, in its row
    np.put_along_axis(repeat, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
    if not repeat.any():
      return samples
    samples[repeat] = rng.integers(0, total, int(repeat.sum()))


def segment_plane(points: np.ndarray, distance_threshold: float, ransac_n: int, num_iterations: int,
                  seed: int) -> np.ndarray | None:
  """The RANSAC plane (a, b, c, d), unit normal, of `points` [M, 3] (M ≥ ransac_n ≥ 3); None when no sample spans
  a plane (e.g. all points on one line)."""
  points = np.asarray(points, np.float64)
  if ransac_n < 3 or len(points) < ransac_n:
    raise ValueError(f'RANSAC needs ransac_n ≥ 3 and at least ransac_n points, got ransac_n={ransac_n} and '
                     f'{len(points)} points')
  rng = np.random.default_rng(seed)
  planes = plane_from_points(points[_distinct_samples(rng, len(points), num_iterations, ransac_n)])
  homogeneous = np.concatenate([points, np.ones((len(points), 1))], -1)
  best, best_fitness, best_rmse, stop, evaluated = None, 0.0, 0.0, np.inf, 0
  for first in range(0, num_iterations, _PLANES_PER_BLOCK):  # scored a block at a time, chosen in order
    if evaluated > stop:
      break
    distance = np.abs(planes[first:first + _PLANES_PER_BLOCK] @ homogeneous.T)
    close = distance < distance_threshold
    inliers = close.sum(1)
    fitness = inliers / len(points)
    rmse = np.where(close, distance, 0).sum(1) / np.sqrt(np.maximum(inliers, 1))
    for i in range(len(inliers)):
      if evaluated > stop:
        break
      if not planes[first + i].any():
        continue
      if fitness[i] > best_fitness or (fitness[i] == best_fitness and rmse[i] < best_rmse):
        best, best_fitness, best_rmse = first + i, fitness[i], rmse[i]
        if best_fitness >= 1:
          stop = 0
        else:  # Open3D's bound; a miss probability that rounds to 1 never stops (as its size_t cast of -inf)
          miss = np.log(1 - best_fitness ** ransac_n)
          stop = np.floor(min(np.log(1 - PROBABILITY) / miss, num_iterations)) if miss < 0 else np.inf
      evaluated += 1
  if best is None:
    return None
  final = np.abs(homogeneous @ planes[best]) < distance_threshold
  plane = plane_from_points(points[final])
  return plane if plane.any() else None
