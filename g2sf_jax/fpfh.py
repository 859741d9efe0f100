"""FPFH point backbone (Rusu et al. 2009): 33-d Fast Point Feature Histograms per valid pixel, via Open3D on CPU.

This is the hand-crafted 3D feature of the BTF baseline (Horwitz & Hoshen, "Back to the Feature"): normals from a
hybrid KD-tree search, then FPFH from a wider hybrid search, on the valid points of the 224x224 organised cloud in
raster order (no voxel down-sampling), scattered back to the pixels with zeros elsewhere.

Search radii are in units of the cloud's point spacing, so one default fits any units and sensor distance: a 224^2
organised cloud of a ~10 cm object has a spacing of ~0.5 mm, our synthetic data ~1.6 mm. The spacing is the median
nearest-neighbour distance of the cloud's valid points, or `FpfhParams.spacing` (data units) to fix it for a run.
  * normals: radius 3 spacings (~28 grid neighbours), at most 30 neighbours;
  * FPFH:    radius 6 spacings (~113 grid neighbours), at most 100 (the FPFH radius must exceed the normal one).
On a dense surface max_nn binds first, so this behaves like BTF's parameters (radius 0.1 / 0.25 m with max_nn 30 /
100, which on MVTec's metric clouds is pure 30-/100-NN); the radius only keeps sparse points (edges, flying pixels)
from borrowing far-away neighbours. Normals are oriented towards the sensor at the origin (`orient_to_camera`),
which makes the histograms independent of the eigen-solver's sign choice and so invariant to rotations about the
camera; BTF leaves them unoriented.

Degenerate clouds: a cloud with fewer than two valid points, or whose spacing is 0 (most points coincide), gives
all-zero features, i.e. background (algorithms.md §2.4 step 5); so does, from Open3D, a point without any neighbour
inside the FPFH radius.

Scale: Open3D normalises each of the three 11-bin sub-histograms to a sum of 200, so its entries are in [0, 200]
with rows of norm ~200. The output is multiplied by `FpfhParams.scale` = 11/200, which makes the mean bin 1 (each
sub-histogram sums to 11, a row to 33), the magnitude of a deep point embedding. PatchCore distances and their
rankings only scale, but G²SF's LSPN takes the raw prototype as input (algorithms.md §4.4). At Open3D's scale its tanh
saturates: on the synthetic default the trained LSPN gave w ≈ (e, 1/e) on most test patches and L_cma stayed at 1.07;
rescaled, L_cma falls to 0.002 within 8 epochs.
"""
import dataclasses
import math
import numbers

import numpy as np

from g2sf_jax import optional
from g2sf_jax.data import transforms
from g2sf_jax.errors import ConfigError

DIM = 33


@dataclasses.dataclass(frozen=True)
class FpfhParams:
  normal_radius: float = 3.0      # in point spacings
  normal_max_nn: int = 30
  feature_radius: float = 6.0     # in point spacings
  feature_max_nn: int = 100
  spacing: float | None = None    # data units; None = the median nearest-neighbour distance of each cloud
  orient_to_camera: bool = True
  scale: float = 11 / 200         # Open3D's sub-histogram sum of 200 -> mean bin 1

  def __post_init__(self):
    reals = [self.normal_radius, self.feature_radius, self.scale] + ([] if self.spacing is None else [self.spacing])
    if not (all(isinstance(x, numbers.Real) and math.isfinite(x) and x > 0 for x in reals)
            and all(isinstance(n, int) and n > 0 for n in (self.normal_max_nn, self.feature_max_nn))):
      raise ConfigError(f'config.fpfh: search parameters must be finite and positive: {self}')


def fpfh_points(points: np.ndarray, params: FpfhParams = FpfhParams()) -> np.ndarray:
  """[N,3] points -> [N,33] float32 FPFH (N may be 0)."""
  if points.shape[0] < 2:
    return np.zeros((points.shape[0], DIM), np.float32)
  o3d = optional.open3d('the fpfh point backbone (config.point_backbone=fpfh)')
  cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, np.float64)))
  spacing = params.spacing or float(np.median(cloud.compute_nearest_neighbor_distance()))
  if not spacing > 0:
    return np.zeros((points.shape[0], DIM), np.float32)
  cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=params.normal_radius * spacing,
                                                              max_nn=params.normal_max_nn))
  if params.orient_to_camera:
    cloud.orient_normals_towards_camera_location(np.zeros(3))
  feature = o3d.pipelines.registration.compute_fpfh_feature(
      cloud, o3d.geometry.KDTreeSearchParamHybrid(radius=params.feature_radius * spacing,
                                                  max_nn=params.feature_max_nn))
  return np.asarray(feature.data, np.float32).T * np.float32(params.scale)


def fpfh_image(xyz: np.ndarray, params: FpfhParams = FpfhParams()) -> np.ndarray:
  """[H,W,3] finite organised cloud -> [H,W,33] float32, FPFH at valid pixels, zeros at invalid ones."""
  valid = transforms.valid_mask(xyz)
  out = np.zeros((*xyz.shape[:2], DIM), np.float32)
  out[valid] = fpfh_points(xyz[valid], params)  # Boolean indexing keeps raster order.
  return out


class FpfhBackbone:
  """PointBackbone (docs/interfaces.md): xyz [B,224,224,3] -> [B,224,224,33], zero at invalid pixels.

  Runs Open3D on the CPU one cloud at a time; the output is NumPy. `meta` (the search parameters) goes into the
  feature cache key.
  """
  name = 'fpfh'
  dim = DIM

  def __init__(self, params: FpfhParams = FpfhParams()):
    self.params = params
    self.min_points = params.normal_max_nn  # a normal needs a neighbourhood
    self.meta = dataclasses.asdict(params)

  def __call__(self, xyz) -> np.ndarray:
    xyz = np.asarray(xyz)
    if xyz.ndim != 4 or xyz.shape[1:] != (224, 224, 3):
      raise ValueError(f'{self.name}: expected xyz [B,224,224,3], got shape {xyz.shape}')
    return np.stack([fpfh_image(cloud, self.params) for cloud in xyz])


def make_backbone(config) -> FpfhBackbone:
  """`config.fpfh` (optional ConfigDict with FpfhParams' field names) overrides the defaults."""
  overrides = dict(config.get('fpfh', None) or {})
  unknown = set(overrides) - {f.name for f in dataclasses.fields(FpfhParams)}
  if unknown:
    raise ConfigError(f'config.fpfh: unknown fields {sorted(unknown)}; '
                     f'expected some of {[f.name for f in dataclasses.fields(FpfhParams)]}')
  return FpfhBackbone(FpfhParams(**overrides))
