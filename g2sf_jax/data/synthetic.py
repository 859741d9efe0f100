"""A procedurally generated multimodal anomaly dataset in the exact MVTec 3D-AD folder layout (algorithms.md §1.1).

Why: the pipeline must run end to end without the real download. Each class is one object shape lying on a tilted
background plane, seen by a pinhole camera the way MVTec's sensor sees it (metric xyz, objects 12-18 cm, ~0.5 m away,
0.8 mm pixel pitch at size 400), so the reference preprocessing (algorithms.md §1.2: RANSAC plane 0.004/0.005, DBSCAN
eps 0.006) behaves as on real data. The sensor adds depth noise along the ray, dropouts, holes at steep slopes and a few
flying pixels.

Defects change exactly one modality or both, and the ground truth is exactly the changed region:
geometry only (`bump`, `crack`, `dent`: xyz changes, rgb does not), colour only (`contamination`, `stain`), both
(`combined`). Every sample is a pure function of `(shape, defect, size, seed)`; the defect draws from its own
random stream, so a defective sample and the good sample of the same seed differ only inside the mask.
"""
import dataclasses
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import cv2
from scipy import ndimage

from g2sf_jax import io, manifest, parallel
from g2sf_jax.data import kind, mvtec3d
from g2sf_jax.errors import CorruptOutputError, OutputExistsError

SHAPES = ('cube', 'cylinder', 'torus', 'sphere')
DEFECT_KINDS = {
    'bump': 'geometry', 'combined': 'both', 'contamination': 'colour', 'crack': 'geometry', 'dent': 'geometry',
    'stain': 'colour',
}
DEFECTS = tuple(sorted(DEFECT_KINDS))

FOV = 0.32           # metres spanned by the image at the plane distance (the default)
_DISTANCE = 0.5      # camera to plane, metres
_DEPTH_NOISE = 2e-4  # metres, along the viewing ray
_DROPOUT = 0.003     # fraction of pixels with no measurement
_FLYING = 5e-4       # fraction of background pixels pulled towards the camera (isolated outliers)
_STEEP = 0.25        # cos(normal, view) below which the sensor returns nothing
_FORMAT_VERSION = 1

_BASE_COLOURS = {
    'cube': (0.78, 0.56, 0.32), 'cylinder': (0.22, 0.42, 0.78), 'torus': (0.82, 0.62, 0.30),
    'sphere': (0.78, 0.22, 0.20),
}


def _check_shape(shape: str) -> None:
  if shape not in SHAPES:
    raise ValueError(f'unknown synthetic class {shape!r}; supported: {", ".join(SHAPES)}')


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
  """Zero-mean, roughly unit-variance noise [size, size] varying over `cells` cells per side."""
  grid = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
  return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _height(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Height [metres] of the object's top surface above the plane at object-local coordinates; 0 off the object."""
  zero = np.zeros_like(x)
  if shape == 'cube':
    half, top, bevel = 0.06, 0.05, 0.005
    ex = np.maximum(np.abs(x) - (half - bevel), 0.0)
    ey = np.maximum(np.abs(y) - (half - bevel), 0.0)
    e = np.hypot(ex, ey)
    return np.where(e < bevel, top - bevel + np.sqrt(np.maximum(bevel**2 - e**2, 0.0)), zero)
  if shape == 'cylinder':
    radius, half_length = 0.033, 0.09
    inside = (np.abs(x) <= half_length) & (np.abs(y) < radius)
    return np.where(inside, radius + np.sqrt(np.maximum(radius**2 - y**2, 0.0)), zero)
  if shape == 'torus':
    big, tube = 0.068, 0.025
    d = np.hypot(x, y) - big
    return np.where(np.abs(d) < tube, tube + np.sqrt(np.maximum(tube**2 - d**2, 0.0)), zero)
  radius = 0.065  # sphere
  rho = np.hypot(x, y)
  return np.where(rho < radius, radius + np.sqrt(np.maximum(radius**2 - rho**2, 0.0)), zero)


def _scene(shape: str, size: int, rng: np.random.Generator, fov: float) -> dict:
  """Clean geometry of one view: plane points, object height, local coordinates, surface normals."""
  focal = size * _DISTANCE / fov
  centre = (size - 1) / 2
  v, u = np.mgrid[0:size, 0:size].astype(np.float32)
  rays = np.stack([(u - centre) / focal, (v - centre) / focal, np.ones_like(u)], -1)
  tilt, azimuth = np.deg2rad(rng.uniform(8, 20)), rng.uniform(0, 2 * np.pi)
  up = np.array([np.sin(tilt) * np.cos(azimuth), np.sin(tilt) * np.sin(azimuth), -np.cos(tilt)], np.float32)
  origin = np.array([0.0, 0.0, rng.uniform(0.47, 0.53)], np.float32)
  plane = rays * ((up @ origin) / (rays @ up))[..., None]
  e1 = np.cross(up, np.array([0.0, 1.0, 0.0], np.float32))
  e1 /= np.linalg.norm(e1)
  e2 = np.cross(up, e1)
  a, b = (plane - origin) @ e1, (plane - origin) @ e2
  offset = rng.uniform(-0.015, 0.015, 2).astype(np.float32)
  yaw, scale = rng.uniform(0, 2 * np.pi), np.float32(rng.uniform(0.95, 1.05))
  c, s = np.float32(np.cos(yaw)), np.float32(np.sin(yaw))
  x = (c * (a - offset[0]) + s * (b - offset[1])) / scale
  y = (-s * (a - offset[0]) + c * (b - offset[1])) / scale
  height = _height(shape, x, y) * scale
  points = plane + height[..., None] * up
  normals = np.cross(np.gradient(points, axis=1), np.gradient(points, axis=0))
  normals /= np.linalg.norm(normals, axis=-1, keepdims=True) + 1e-12
  view = -points / np.linalg.norm(points, axis=-1, keepdims=True)
  facing = np.sum(normals * view, -1)
  normals *= np.sign(facing + 1e-12)[..., None]  # towards the camera
  facing = np.abs(facing)
  return dict(plane=plane, height=height, up=up, x=x, y=y, normals=normals, facing=facing, object=height > 0,
              rays=rays / np.linalg.norm(rays, axis=-1, keepdims=True))


def _albedo(shape: str, scene: dict, rng: np.random.Generator) -> np.ndarray:
  """Textured colour [S, S, 3] in [0, 1]: object pattern in object-local coordinates, grey background."""
  size = scene['height'].shape[0]
  low, fine = _smooth_noise(rng, size, 6), _smooth_noise(rng, size, 40)
  x, y = scene['x'], scene['y']
  if shape == 'cube':  # wood grain
    pattern = 0.12 * np.sin(2 * np.pi * x / 0.006 + 1.5 * low) + 0.05 * fine
  elif shape == 'torus':  # crust speckles
    pattern = -0.25 * (fine > 1.2) + 0.08 * low
  elif shape == 'cylinder':  # printed stripes
    pattern = 0.10 * np.sign(np.sin(2 * np.pi * x / 0.02)) + 0.04 * fine
  else:
    pattern = 0.10 * low + 0.05 * fine + 0.08 * np.sin(2 * np.pi * np.hypot(x, y) / 0.01)
  base = np.asarray(_BASE_COLOURS[shape], np.float32)
  obj = np.clip(base * (1 + pattern[..., None]), 0, 1)
  background = np.clip(0.45 + 0.04 * low + 0.03 * fine, 0, 1)[..., None] * np.ones(3, np.float32)
  return np.where(scene['object'][..., None], obj, background)


def _defect_site(scene: dict, area_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, float, np.ndarray]:
  """Picks a centre (row, col) on a well-observed part of the object and a radius in pixels."""
  obj = scene['object']
  inner = ndimage.distance_transform_edt(obj)
  radius = np.sqrt(area_fraction * obj.sum() / np.pi)
  good = obj & (scene['facing'] > 0.7)
  candidates = np.argwhere(good & (inner >= radius + 3))
  if not len(candidates):
    best = np.unravel_index(np.argmax(np.where(good, inner, 0)), obj.shape)
    candidates = np.array([best])
    radius = max(inner[best] - 3, 2.0)
  centre = candidates[rng.integers(len(candidates))]
  return centre.astype(np.float64), float(radius), inner


def _blob(size: int, centre: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
  """Normalised radius q [S, S] of an irregular blob: q < 1 inside."""
  v, u = np.mgrid[0:size, 0:size].astype(np.float32)
  dy, dx = v - np.float32(centre[0]), u - np.float32(centre[1])
  theta = np.arctan2(dy, dx)
  p1, p2 = rng.uniform(0, 2 * np.pi, 2)
  boundary = radius * (1 + 0.2 * np.sin(3 * theta + p1) + 0.1 * np.sin(5 * theta + p2))
  return np.hypot(dx, dy) / boundary


def _crack(centre: np.ndarray, area: float, keep: np.ndarray,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """A thin kinked groove: (region bool [S, S], depth profile in [0.5, 1] [S, S]).

  Of 8 random polylines from `centre`, keeps the one with the most pixels in `keep` (cracks along a torus).
  """
  size = keep.shape[0]
  width = max(3, round(size / 130))
  length = area / width
  best = None
  for start_angle in np.linspace(0, np.pi, 8, endpoint=False) + rng.uniform(0, np.pi / 8):
    angles = start_angle + np.cumsum(rng.uniform(-0.5, 0.5, 3))
    steps = length / 3 * np.stack([np.cos(angles), np.sin(angles)], -1)  # (col, row) for cv2
    nodes = np.concatenate([[centre[::-1]], centre[::-1] + np.cumsum(steps, 0)])
    canvas = np.zeros((size, size), np.uint8)
    cv2.polylines(canvas, [np.round(nodes).astype(np.int32)], False, 1, thickness=width)
    region = (canvas > 0) & keep
    if best is None or region.sum() > best.sum():
      best = region
  profile = 0.5 + 0.5 * np.minimum(ndimage.distance_transform_edt(best) / (width / 2), 1.0)
  return best, np.where(best, profile, 0.0)


def _defect(defect: str, scene: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns (height change [S, S] metres, colour alpha [S, S], colour [3]); zero outside the defect."""
  size = scene['height'].shape[0]
  zero = np.zeros((size, size), np.float32)
  centre, radius, inner = _defect_site(scene, rng.uniform(0.02, 0.05), rng)
  keep = scene['object'] & (inner >= 3) & (scene['facing'] > 0.5)
  if defect == 'crack':
    region, profile = _crack(centre, rng.uniform(0.015, 0.03) * scene['object'].sum(), keep, rng)
    return np.where(region, -rng.uniform(0.002, 0.004) * profile, 0.0), zero, np.zeros(3)
  q = _blob(size, centre, radius, rng)
  region = (q < 1) & keep
  profile = np.where(region, 0.35 + 0.65 * (1 - np.minimum(q, 1) ** 2), 0.0)
  if defect in ('dent', 'bump'):
    sign = -1.0 if defect == 'dent' else 1.0
    return sign * rng.uniform(0.0025, 0.004) * profile, zero, np.zeros(3)
  if defect == 'stain':
    alpha = np.where(region, 0.55 + 0.3 * np.clip(_smooth_noise(rng, size, 12), -1, 1), 0.0)
    return zero, alpha, np.array([0.25, 0.15, 0.07])
  if defect == 'contamination':
    v, u = np.mgrid[0:size, 0:size].astype(np.float32)
    spots = np.zeros((size, size), bool)
    for _ in range(rng.integers(3, 6)):
      offset = rng.uniform(-0.8, 0.8, 2) * radius
      spots |= np.hypot(v - centre[0] - offset[0], u - centre[1] - offset[1]) < radius / 2.5
    return zero, np.where(spots & keep, 0.9, 0.0), np.array([0.35, 0.80, 0.40])
  if defect == 'combined':
    return rng.uniform(0.0025, 0.004) * profile, np.where(region, 0.7, 0.0), np.array([0.12, 0.08, 0.08])
  raise ValueError(f'unknown defect {defect!r}; supported: good, {", ".join(DEFECTS)}')


def render_sample(shape: str, defect: str, size: int, seed: int | Sequence[int],
                  fov: float = FOV) -> tuple[np.ndarray, ...]:
  """One view: `(rgb uint8 [S,S,3], xyz float32 [S,S,3], gt uint8 [S,S] in {0, 255})`.

  `defect` is 'good' or one of `DEFECTS`. The scene, texture and sensor draw from one stream of `seed` and the
  defect from another, so `render_sample(s, 'good', n, k)` is the defect-free twin of `render_sample(s, d, n, k)`.
  `gt` marks the changed surface (including the few pixels there that the sensor misses). Below size ~200 the pixel
  pitch exceeds 1.5 mm and DBSCAN (eps 6 mm, 30 points, algorithms.md §1.2) starts labelling the object as noise.
  `fov` (metres seen across at the plane) zooms: the default frames the object like the synthetic default set;
  0.16 fills about half the frame, as MVTec 3D-AD does (~25k valid points at 224²).
  """
  _check_shape(shape)
  if defect != 'good' and defect not in DEFECT_KINDS:
    raise ValueError(f'unknown defect {defect!r}; supported: good, {", ".join(DEFECTS)}')
  scene_seq, defect_seq = np.random.SeedSequence(seed).spawn(2)
  rng = np.random.default_rng(scene_seq)
  scene = _scene(shape, size, rng, fov)
  albedo = _albedo(shape, scene, rng)
  depth_noise = rng.standard_normal((size, size), dtype=np.float32) * np.float32(_DEPTH_NOISE)
  colour_noise = rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(0.012)
  dropout = rng.random((size, size), dtype=np.float32) < _DROPOUT
  flying = (rng.random((size, size), dtype=np.float32) < _FLYING) & ~scene['object']
  flying_offset = 0.01 + 0.02 * rng.random((size, size), dtype=np.float32)

  if defect == 'good':
    dh, alpha, colour = np.zeros((size, size), np.float32), np.zeros((size, size), np.float32), np.zeros(3, np.float32)
  else:
    dh, alpha, colour = _defect(defect, scene, np.random.default_rng(defect_seq))
    dh, alpha, colour = dh.astype(np.float32), alpha.astype(np.float32), colour.astype(np.float32)

  light = np.array([0.3, -0.4, -0.87], np.float32)
  light /= np.linalg.norm(light)
  shade = 0.35 + 0.65 * np.clip(scene['normals'] @ light, 0, 1)
  albedo = (1 - alpha[..., None]) * albedo + alpha[..., None] * colour
  rgb = np.clip(albedo * shade[..., None] + colour_noise, 0, 1)
  rgb = np.round(rgb * 255).astype(np.uint8)

  points = scene['plane'] + (scene['height'] + dh)[..., None] * scene['up']
  points = points + (depth_noise - np.where(flying, flying_offset, 0.0))[..., None] * scene['rays']
  missing = dropout | (scene['facing'] < _STEEP)
  xyz = np.where(missing[..., None], 0.0, points).astype(np.float32)
  gt = ((dh != 0) | (alpha > 0)).astype(np.uint8) * 255
  return rgb, xyz, gt


def _test_counts(n_test: int) -> dict[str, int]:
  """Splits `n_test` over `good` and the defect folders as evenly as possible, `good` first."""
  folders = ('good',) + DEFECTS
  base, extra = divmod(n_test, len(folders))
  return {f: base + (i < extra) for i, f in enumerate(folders)}


def _write_class(root: Path, shape: str, n_train: int, n_test: int, size: int, seed: int,
                 modalities: tuple[str, ...], fov: float, workers: parallel.Workers) -> None:
  shape_id = SHAPES.index(shape)
  plan = [('train', 'good', n_train), ('validation', 'good', max(1, n_train // 4))]
  plan += [('test', folder, n) for folder, n in _test_counts(n_test).items()]
  jobs = [_SampleJob(root / split / folder, i, shape, folder, size,
                     (seed, shape_id, split_id, 0 if folder == 'good' else 1 + DEFECTS.index(folder), i), fov,
                     modalities, split == 'test')
          for split_id, (split, folder, count) in enumerate(plan) for i in range(count)]
  for _ in workers.map(_write_sample, jobs):
    pass


@dataclasses.dataclass(frozen=True)
class _SampleJob:
  """One sample's files: what `_write_sample` renders and where it writes them (picklable for a worker)."""
  folder: Path
  index: int
  shape: str
  defect: str
  size: int
  seed: tuple[int, ...]
  fov: float
  modalities: tuple[str, ...]
  ground_truth: bool


def _write_sample(job: _SampleJob) -> None:
  rgb, xyz, gt = render_sample(job.shape, job.defect, job.size, job.seed, job.fov)
  if 'rgb' in job.modalities:
    io.write_png(job.folder / 'rgb' / f'{job.index:03d}.png', rgb)
  if 'xyz' in job.modalities:
    io.write_xyz_tiff(job.folder / 'xyz' / f'{job.index:03d}.tiff', xyz)
  if job.ground_truth:
    io.write_png(job.folder / 'gt' / f'{job.index:03d}.png', gt)


def _intact(folder: Path) -> bool:
  """Whether a generated class still holds exactly the files it was generated with (none edited or removed)."""
  try:
    found = manifest.read(folder)
  except CorruptOutputError:
    return False
  return found is not None and not manifest.problems(folder, found)


def generate(out_dir: str | os.PathLike, classes: str | Sequence[str], n_train: int, n_test: int, size: int,
             seed: int, modalities: str | Sequence[str] = io.MODALITIES, fov: float = FOV,
             replace: bool = False, workers: int = 1) -> Path:
  """Writes `<out_dir>/<class>/{train,validation}/good/{rgb,xyz}` and `<class>/test/<folder>/{rgb,xyz,gt}`.

  `n_test` is the test total per class, split evenly over `good` and `DEFECTS`; validation gets `n_train // 4`
  (at least 1). `modalities` ('rgb', 'xyz' or both) chooses which of the rgb/ and xyz/ folders are written: the
  samples are rendered the same either way, so a single-modality class holds exactly the files of the two-modality
  one (its ground truth too, even for defects the missing modality alone shows). `fov`: see `render_sample`.
  Each class is written to a temporary folder and renamed into place, with its parameters in
  `<class>/synthetic.json` and a manifest of its files: a class already generated with the same parameters and
  intact files is kept (resumable, idempotent); one generated with other parameters, or whose files were edited, is
  an error rather than silently mixed, unless `replace` (the runner's own `<workdir>/raw`): then it is generated
  again in one rename. A folder without `synthetic.json` is never replaced.
  `workers` processes render the samples (`g2sf_jax.parallel`; the files are the same for any number).
  """
  if isinstance(classes, str):
    classes = [c.strip() for c in classes.split(',') if c.strip()]
  for shape in classes:
    _check_shape(shape)
  if n_train < 1 or n_test < 1 or size < 64 or not fov > 0:
    raise ValueError(f'need n_train >= 1, n_test >= 1, size >= 64, fov > 0; got {n_train}, {n_test}, {size}, {fov}')
  modalities = kind.parse_modalities(modalities)
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  for shape in classes:
    params = dict(shape=shape, n_train=n_train, n_test=n_test, size=size, seed=seed, version=_FORMAT_VERSION,
                  modalities=list(modalities), fov=fov)
    final = out_dir / shape
    meta = final / 'synthetic.json'
    if final.exists():
      if meta.is_file() and json.loads(meta.read_text()) == params and _intact(final):
        continue
      if not (replace and meta.is_file()):
        raise OutputExistsError(f'{final} exists but was not generated with {params}, or whose files were edited '
                                f'since (see {meta}); remove it or choose another output folder')
    with io.atomic_dir(final, lambda folder: replace and (folder / 'synthetic.json').is_file()) as tmp, \
        parallel.Workers(workers) as pool:
      _write_class(tmp, shape, n_train, n_test, size, seed, modalities, fov, pool)
      (tmp / 'synthetic.json').write_text(json.dumps(params, indent=1, sort_keys=True))
      manifest.write(tmp, {'generated': params})
  return out_dir


# The generated folders have the MVTec 3D-AD layout, so the MVTec listing and preprocessing apply unchanged.
KIND = dataclasses.replace(mvtec3d.KIND, name='synthetic', classes=SHAPES, open_classes=False)
