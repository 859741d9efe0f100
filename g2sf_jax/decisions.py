"""A scan's decision at its calibrated threshold: label, normalised score, the defect mask at the scan's own
resolution, and the defect regions with their size and position on the part.

The 224×224 anomaly map is resized to the stored scan (bilinear) and the square padding of preprocessing is undone,
so the mask and the regions lie on the pixels of the files the scanner wrote. Areas in mm² and centroids come from
the organised point cloud (the cleaned one: background and outliers have no points); `unit_mm` is the length of one
xyz unit in millimetres (MVTec 3D-AD and the synthetic set are in metres: 1000).
"""
import dataclasses

import numpy as np
from PIL import Image
from scipy import ndimage

from g2sf_jax.calibration import RowCalibration
from g2sf_jax.data import kind, preprocessing, transforms

LABELS = ('good', 'defect', 'unscorable')


@dataclasses.dataclass(frozen=True)
class Region:
  """One connected defect region (8-connected pixels of the mask)."""
  bbox: tuple[int, int, int, int]    # x0, y0, x1, y1 in the scan's pixels (x1, y1 exclusive)
  area_px: int
  area_mm2: float | None             # the surface the region's valid points cover; None without a point cloud
  peak: float                        # its highest normalised pixel score
  centroid: tuple[float, float, float] | None  # mean xyz of its valid points, in the scanner's coordinates

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Decision:
  label: str                          # good | defect
  score: float                        # normalised image score: 0.5 at the calibrated threshold
  raw: float                          # the raw image score
  threshold: float                    # the normalised threshold applied (0.5 unless a caller chose another)
  map: np.ndarray                     # float32 [H, W] normalised pixel scores at the scan's resolution
  mask: np.ndarray                    # bool [H, W]: map ≥ threshold
  regions: tuple[Region, ...]

  def summary(self) -> dict:
    """The JSON-able fields (everything but the arrays)."""
    return {'label': self.label, 'score': self.score, 'raw_score': self.raw, 'threshold': self.threshold,
            'defect_pixels': int(self.mask.sum()), 'regions': [r.to_json() for r in self.regions]}


def map_u8(normalised: np.ndarray) -> np.ndarray:
  """Normalised scores → uint8 on the fixed scale maps are written on: 255 × score, so 128 is the threshold."""
  return np.clip(np.round(np.asarray(normalised) * 255), 0, 255).astype(np.uint8)


def to_scan(map224: np.ndarray, stored: kind.Stored) -> np.ndarray:
  """A 224×224 map on the scan's own pixels `[H, W]` float32: resized to the stored S×S, padding undone."""
  side = (stored.xyz if stored.xyz is not None else stored.rgb).shape[0]
  full = np.asarray(Image.fromarray(np.asarray(map224, np.float32)).resize((side, side), Image.BILINEAR))
  return preprocessing.unpad_square(full, stored.raw_size or (side, side))


def scan_cloud(stored: kind.Stored) -> np.ndarray | None:
  """The cleaned organised cloud on the scan's own pixels `[H, W, 3]` (padding undone), or None."""
  if stored.xyz is None:
    return None
  side = stored.xyz.shape[0]
  return preprocessing.unpad_square(stored.xyz, stored.raw_size or (side, side))


def pixel_areas(xyz: np.ndarray) -> np.ndarray:
  """`[H, W]` surface area each valid pixel of an organised cloud covers (xyz units²; 0 where no point): the norm of
  the cross product of its steps to the right and downward neighbours, where both are valid, else the median of the
  valid pixels' areas."""
  valid = transforms.valid_mask(xyz)
  dx = np.zeros_like(xyz)
  dy = np.zeros_like(xyz)
  dx[:, :-1] = xyz[:, 1:] - xyz[:, :-1]
  dy[:-1] = xyz[1:] - xyz[:-1]
  ok = valid.copy()
  ok[:, :-1] &= valid[:, 1:]
  ok[:-1] &= valid[1:]
  ok[:, -1] = False
  ok[-1] = False
  area = np.linalg.norm(np.cross(dx, dy), axis=-1)
  fallback = float(np.median(area[ok])) if ok.any() else 0.0
  return np.where(ok, area, np.where(valid, fallback, 0.0)).astype(np.float64)


def regions(mask: np.ndarray, normalised: np.ndarray, xyz: np.ndarray | None, unit_mm: float) -> tuple[Region, ...]:
  """The 8-connected regions of `mask` [H, W], largest first."""
  labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
  if not count:
    return ()
  valid = transforms.valid_mask(xyz) if xyz is not None else None
  areas = pixel_areas(xyz) if xyz is not None else None
  out = []
  for index, found in enumerate(ndimage.find_objects(labels), start=1):
    inside = labels[found] == index
    ys, xs = found
    area_mm2 = centroid = None
    if xyz is not None:
      area_mm2 = float(areas[found][inside].sum() * unit_mm ** 2)
      points = xyz[found][inside & valid[found]]
      centroid = tuple(float(v) for v in points.mean(axis=0)) if len(points) else None
    out.append(Region((int(xs.start), int(ys.start), int(xs.stop), int(ys.stop)), int(inside.sum()), area_mm2,
                      float(normalised[found][inside].max()), centroid))
  return tuple(sorted(out, key=lambda r: -r.area_px))


def decide(stored: kind.Stored, raw_image: float, map224: np.ndarray, calibration: RowCalibration,
           threshold: float = 0.5, unit_mm: float = 1000.0) -> Decision:
  """One scan's decision for one row at the normalised `threshold` (0.5: the calibrated one)."""
  score = float(calibration.image.normalise(raw_image))
  normalised = calibration.pixel.normalise(to_scan(map224, stored))
  mask = normalised >= threshold
  found = regions(mask, normalised, scan_cloud(stored), unit_mm)
  label = 'defect' if calibration.is_defect(raw_image, threshold) else 'good'
  return Decision(label, score, float(raw_image), float(threshold), normalised, mask, found)
