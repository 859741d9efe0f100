"""The reference's one-off dataset preprocessing (algorithms.md §1.2 MVTec 3D-AD, §1.3 Eyecandies) as pure array
functions.

The reference rewrites the download in place; here every function takes arrays and returns new ones, and the TFDS
builders store the result, so the user's raw folder is never touched. A sample the reference would crash on (an
empty cloud, too few border points for RANSAC) or silently mangle (NaNs) yields a `Problem` record instead, so one
bad file never stops the preparation of a whole dataset.
"""
import dataclasses
import math

import numpy as np

from g2sf_jax.data import dbscan, plane, transforms

# algorithms.md §1.2 constants.
BORDER = 10
PLANE_RANSAC_THRESHOLD = 0.004
PLANE_RANSAC_N = 50
PLANE_RANSAC_ITERATIONS = 1000
PLANE_REMOVE_DISTANCE = 0.005
DBSCAN_EPS = 0.006
DBSCAN_MIN_POINTS = 30

# algorithms.md §1.3 constants.
EYECANDIES_FOCAL = 711.11


@dataclasses.dataclass(frozen=True)
class Problem:
  """Something wrong with one sample that preparation worked around (and the user should know about)."""
  kind: str    # empty_cloud | non_finite | few_border_points | no_border_plane | missing_mask
  detail: str

  def __str__(self) -> str:
    return f'{self.kind}: {self.detail}'


@dataclasses.dataclass(frozen=True)
class MvtecSample:
  """One preprocessed MVTec-layout sample (algorithms.md §1.2), all [S, S, ...] after square padding."""
  xyz: np.ndarray        # float32 [S, S, 3], plane removed, largest cluster only
  rgb: np.ndarray | None  # uint8 [S, S, 3], zero wherever xyz was zeroed; None for a point-cloud-only sample
  mask: np.ndarray       # uint8 [S, S], padded ground truth
  xyz_orig: np.ndarray   # float32 [S, S, 3], the input cloud with only the padding (algorithms.md §4.2 step 1)
  problems: tuple[Problem, ...]


def sanitize(xyz: np.ndarray) -> tuple[np.ndarray, list[Problem]]:
  """Replaces non-finite points by (0, 0, 0): a NaN would poison RANSAC and DBSCAN."""
  bad = ~np.all(np.isfinite(xyz), axis=-1)
  if not bad.any():
    return xyz, []
  xyz = np.where(bad[..., None], 0, xyz).astype(xyz.dtype)
  return xyz, [Problem('non_finite', f'{int(bad.sum())} points with NaN/inf set to missing')]


def border_points(xyz: np.ndarray, width: int = BORDER) -> np.ndarray:
  """[M, 3]: the valid points of the top, bottom, left and right strips (corners counted twice, algorithms.md §1.2)."""
  strips = [xyz[:width], xyz[-width:], xyz[:, :width], xyz[:, -width:]]
  points = np.concatenate([s.reshape(-1, 3) for s in strips])
  return points[transforms.valid_mask(points)]


def fit_plane(points: np.ndarray, seed: int) -> np.ndarray | None:
  """The RANSAC plane (a, b, c, d) of Open3D's `segment_plane` with algorithms.md §1.2's settings, unit normal, seeded
  so preparation is reproducible; None when the points span no plane."""
  return plane.segment_plane(points, PLANE_RANSAC_THRESHOLD, PLANE_RANSAC_N, PLANE_RANSAC_ITERATIONS, seed)


def _zero_where(array: np.ndarray | None, drop: np.ndarray) -> np.ndarray | None:
  """`array` [H, W, C] with the pixels of `drop` [H, W] zeroed; None stays None (a missing RGB image)."""
  return None if array is None else np.where(drop[..., None], 0, array).astype(array.dtype)


def remove_plane(xyz: np.ndarray, rgb: np.ndarray | None,
                 seed: int) -> tuple[np.ndarray, np.ndarray | None, list[Problem]]:
  """Zeroes xyz and rgb (if given) within 0.005 of the plane fitted to the border points (algorithms.md §1.2 step 1)."""
  edges = border_points(xyz)
  if len(edges) < PLANE_RANSAC_N:
    return xyz, rgb, [Problem('few_border_points', f'{len(edges)} valid border points < ransac_n={PLANE_RANSAC_N}; '
                              'background plane not removed')]
  model = fit_plane(edges, seed)
  if model is None:
    return xyz, rgb, [Problem('no_border_plane', f'the {len(edges)} valid border points span no plane (collinear); '
                              'background plane not removed')]
  distance = np.abs(xyz.astype(np.float64) @ model[:3] + model[3])
  on_plane = distance < PLANE_REMOVE_DISTANCE
  return _zero_where(xyz, on_plane), _zero_where(rgb, on_plane), []


def pad_square(array: np.ndarray) -> np.ndarray:
  """Zero-pads [H, W, ...] centred to [S, S, ...], S = max of H, W rounded up to a multiple of 100 (algorithms.md §1.2).
  """
  h, w = array.shape[:2]
  side = max(math.ceil(h / 100) * 100, math.ceil(w / 100) * 100)
  top, left = (side - h) // 2, (side - w) // 2
  pad = [(top, side - h - top), (left, side - w - left)] + [(0, 0)] * (array.ndim - 2)
  return np.pad(array, pad, mode='constant')


def unpad_square(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """The inverse of `pad_square`: the centred [H, W, ...] region of a padded [S, S, ...] array (`size` = (H, W))."""
  h, w = size
  top, left = (array.shape[0] - h) // 2, (array.shape[1] - w) // 2
  return array[top:top + h, left:left + w]


def largest_cluster(xyz: np.ndarray, rgb: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, list[Problem]]:
  """Keeps only the most populous DBSCAN label among the valid points (algorithms.md §1.2 step 3); rgb may be None.

  Reference quirk, kept: the noise label -1 takes part in the vote, so if noise outnumbers every cluster, the noise
  points are what is kept.
  """
  valid = transforms.valid_mask(xyz)
  if not valid.any():
    return xyz, rgb, [Problem('empty_cloud', 'no valid point left after plane removal')]
  labels = dbscan.cluster_dbscan(xyz[valid], DBSCAN_EPS, DBSCAN_MIN_POINTS)
  ids, counts = np.unique(labels, return_counts=True)
  drop = np.zeros(valid.shape, bool)
  drop[valid] = labels != ids[np.argmax(counts)]
  return _zero_where(xyz, drop), _zero_where(rgb, drop), []


def _pad_optional(array: np.ndarray | None) -> np.ndarray | None:
  return None if array is None else pad_square(array)


def preprocess_mvtec(xyz: np.ndarray, rgb: np.ndarray | None, mask: np.ndarray, seed: int = 0) -> MvtecSample:
  """algorithms.md §1.2 on one sample: plane removal, square padding, largest-cluster cleaning.

  xyz float32 [H, W, 3], rgb uint8 [H, W, 3] or None (a point-cloud-only dataset: only the RGB masking is
  skipped), mask uint8 [H, W]. `seed` seeds the RANSAC plane fit.
  """
  xyz, problems = sanitize(xyz)
  xyz_orig = pad_square(xyz)
  if not transforms.valid_mask(xyz).any():
    problems.append(Problem('empty_cloud', 'the point cloud has no valid point'))
    return MvtecSample(xyz_orig, _pad_optional(rgb), pad_square(mask), xyz_orig, tuple(problems))
  xyz, rgb, found = remove_plane(xyz, rgb, seed)
  problems += found
  xyz, rgb, found = largest_cluster(pad_square(xyz), _pad_optional(rgb))
  problems += found
  return MvtecSample(xyz, rgb, pad_square(mask), xyz_orig, tuple(problems))


def eyecandies_depth_to_xyz(depth16: np.ndarray, depth_min: float, depth_max: float, pose: np.ndarray,
                            focal: float = EYECANDIES_FOCAL) -> np.ndarray:
  """Back-projects a 16-bit depth PNG to float64 [H*W, 3] points in row-major pixel order (algorithms.md §1.3)."""
  h, w = depth16.shape
  depth = depth16.astype(np.float32) / 65535.0 * (depth_max - depth_min) + depth_min
  intrinsics = np.array([[focal, 0, w / 2, 0], [0, focal, h / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
  v, u = np.mgrid[0:h, 0:w]
  inverse_depth = (1.0 / depth.ravel()).astype(np.float64)  # computed in float32, as the reference does
  vectors = np.stack([u.ravel(), v.ravel(), np.ones(h * w), inverse_depth])
  homogeneous = np.linalg.inv(intrinsics @ pose) @ vectors
  return depth.reshape(-1, 1).astype(np.float64) * homogeneous.T[:, :3]


def remove_point_cloud_background(pc: np.ndarray) -> np.ndarray:
  """algorithms.md §1.3 `remove_point_cloud_background` on [512*512, 3] points, exactly as written.

  Background points end with x = 0 but y, z != 0: invalid under the all-coordinates test.
  """
  a, b = pc[256], pc[-256]
  dz, dy = a[1] - b[1], a[2] - b[2]
  norm = math.sqrt(dz**2 + dy**2)
  cos, sin = dy / norm, dz / norm
  start = np.array([0.0, b[1], b[2]])
  rotation = np.array([[1, 0, 0], [0, cos, -sin], [0, sin, cos]])
  q = (pc - start) @ rotation.T
  background = (q[:, 1] > -0.02) | (q[:, 2] > 1.8) | (np.abs(q[:, 0]) > 1)
  q[background] = -start
  p = q @ rotation + start
  return p[:, [0, 2, 1]] * np.array([0.1, -0.1, 0.1])


def preprocess_eyecandies(depth16: np.ndarray, depth_min: float, depth_max: float,
                          pose: np.ndarray) -> tuple[np.ndarray, tuple[Problem, ...]]:
  """Depth PNG + info_depth range + pose -> float32 [512, 512, 3] background-free cloud (algorithms.md §1.3)."""
  h, w = depth16.shape
  pc = eyecandies_depth_to_xyz(depth16, depth_min, depth_max, pose)
  with np.errstate(invalid='ignore', divide='ignore'):
    pc = remove_point_cloud_background(pc)
  xyz, problems = sanitize(pc.reshape(h, w, 3).astype(np.float32))
  if not transforms.valid_mask(xyz).any():
    problems.append(Problem('empty_cloud', 'no valid point after background removal'))
  return xyz, tuple(problems)
