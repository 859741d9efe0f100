"""A model bundle: one trained class as a self-contained folder that scores raw scans with nothing but JAX, NumPy and
the image readers (Open3D too for an FPFH bundle) — no PyTorch, TFDS, configs or work directory.

  manifest.json      format and version, method, class, rows, modalities, input sizes, preprocessing parameters,
                     the backbones, the platforms the programs were lowered for, the source run's output keys, the
                     package versions that made it, and the size and SHA-256 of every other file
  calibration.json   the class's thresholds (`g2sf_jax.calibration`)
  programs/*.jax     the scoring programs, serialised with `jax.export` for every platform in `platforms`: the RGB
                     backbone, the point backbone (PointMAE, one program per point bucket, the clouds of a batch
                     one after another; FPFH runs Open3D on the host) and the method's scorer
                     (`Scorer.per_sample`); the batch size is symbolic, so one program serves any batch
  arrays/*.npz       the programs' first argument, their arrays (network weights, coresets, normalisers), read
                     with `allow_pickle=False`

`Bundle.load` checks the manifest before anything else is read: a file changed, missing or added since the export,
a newer format version, or a platform the programs were not lowered for is refused with one line naming it. A
bundle scores through `g2sf_jax.scoring` like the `Detector` it was exported from, so its answers equal
`predict`'s.
"""
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from g2sf_jax import data, features, manifest as manifests, scoring
from g2sf_jax.calibration import FILE as CALIBRATION_FILE, Calibration
from g2sf_jax.errors import CorruptOutputError, MissingInputError
from g2sf_jax.ops import buckets

FORMAT = 'g2sf-jax bundle'
FORMAT_VERSION = 1
PLATFORMS = ('cpu', 'cuda', 'tpu')


class BundleError(CorruptOutputError):
  """A bundle that cannot be loaded as it is: damaged, edited, incomplete, too new or for other platforms."""


def current_platform() -> str:
  """The platform name `jax.export` uses for this process's default backend: cpu, cuda, rocm or tpu."""
  backend = jax.default_backend()
  if backend == 'gpu':
    return 'rocm' if 'rocm' in jax.devices()[0].client.platform_version.lower() else 'cuda'
  return backend


def verify(path: str | Path) -> dict:
  """The manifest of the bundle at `path` once every file matches it; BundleError naming the first problem."""
  folder = Path(path)
  if not folder.is_dir():
    raise MissingInputError(f'{folder}: no bundle here (expected the folder python -m experiments.export writes)')
  found = manifests.read(folder)
  if found is None:
    raise BundleError(f'{folder}: not a bundle ({manifests.MANIFEST} missing)')
  if found.get('format') != FORMAT:
    raise BundleError(f'{folder / manifests.MANIFEST}: not a g2sf-jax bundle manifest')
  version = found.get('format_version')
  if not isinstance(version, int) or isinstance(version, bool) or version < 1:
    raise BundleError(f'{folder / manifests.MANIFEST}: field \'format_version\' {version!r} is not a version number')
  if version > FORMAT_VERSION:
    raise BundleError(f'{folder}: bundle format version {version!r} is newer than this g2sf-jax reads '
                      f'({FORMAT_VERSION}); upgrade g2sf-jax')
  files = found.get('files')
  if not isinstance(files, dict) or not files:
    raise BundleError(f'{folder / manifests.MANIFEST}: lists no files')
  for key, kinds in _FIELDS.items():
    if not isinstance(found.get(key), kinds) or isinstance(found.get(key), bool) is not (kinds is bool):
      raise BundleError(f'{folder / manifests.MANIFEST}: field {key!r} missing or not a {_kind_names(kinds)}')
  damaged = [rel for rel, entry in files.items() if not (isinstance(entry, list) and len(entry) == 2
                                                         and isinstance(entry[0], int) and isinstance(entry[1], str))]
  if damaged:
    raise BundleError(f'{folder / manifests.MANIFEST}: the entry of {damaged[0]!r} is not [size, sha256]')
  outside = [rel for rel in files if not _inside(rel)]
  if outside:
    raise BundleError(f'{folder / manifests.MANIFEST}: names {outside[0]!r}, which is not a file inside the bundle')
  extra = sorted(set(manifests.files_below(folder)) - set(files))
  extra += [manifests.STAT_CACHE] if (folder / manifests.STAT_CACHE).exists() else []
  if extra:
    raise BundleError(f'{folder / extra[0]}: not part of the bundle (a file added after the export)')
  problems = manifests.problems(folder, found)  # hashes every file: a bundle carries no stat cache (refused above)
  if problems:
    raise BundleError(problems[0] + (f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''))
  return found


# What `Bundle` reads from a manifest beyond its files, and the types export writes.
_FIELDS = {'platforms': list, 'method': str, 'class_name': str, 'dataset': str, 'rows': list, 'main_row': str,
           'modalities': list, 'data_modalities': list, 'needs': list, 'feature_shapes': dict, 'batch_size': int,
           'unit_mm': (int, float), 'clean_scans': bool, 'rgb_backbone': (dict, type(None)),
           'point_backbone': (dict, type(None)), 'programs': dict, 'calibrated': bool}


def _kind_names(kinds) -> str:
  return ' or '.join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))


def _inside(rel) -> bool:
  """Whether a manifest's file name is a plain relative path below the bundle folder."""
  path = PurePosixPath(rel) if isinstance(rel, str) else None
  return path is not None and not path.is_absolute() and '..' not in path.parts and str(path) == rel


def listed(folder: Path, manifest: Mapping, rel) -> Path:
  """`folder / rel` for a file the (verified) manifest lists: a program reads nothing its manifest did not hash."""
  if not _inside(rel) or rel not in manifest['files']:
    raise BundleError(f'{folder / manifests.MANIFEST}: refers to {rel!r}, which it does not list among its files')
  return folder / rel


def _arrays(folder: Path, rel: str, cache: dict) -> list[jax.Array]:
  """The arrays of `arrays/<name>.npz` in order, read once per bundle (programs of one network share them)."""
  if rel not in cache:
    try:
      with np.load(folder / rel, allow_pickle=False) as z:
        cache[rel] = [jnp.asarray(z[f'{i:05d}']) for i in range(len(z.files))]
    except (OSError, ValueError, KeyError) as e:
      raise BundleError(f'{folder / rel}: cannot be loaded ({e.__class__.__name__}: {e})') from None
  return cache[rel]


class Program:
  """One exported program and its arrays: `program(*inputs)` = the exported function of (arrays, *inputs)."""

  def __init__(self, folder: Path, manifest: Mapping, spec: Mapping, cache: dict):
    listed(folder, manifest, spec.get('arrays'))
    try:
      self.exported = jax.export.deserialize(bytearray(listed(folder, manifest, spec.get('file')).read_bytes()))
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise BundleError(f'{folder / spec.get("file", "?")}: cannot be loaded ({e.__class__.__name__}: {e})') from None
    self.arrays = _arrays(folder, spec['arrays'], cache)
    self._call = jax.jit(self.exported.call)

  def __call__(self, *inputs):
    return self._call(self.arrays, *inputs)


class RgbProgram:
  """The exported RGB backbone: ImageNet-normalised rgb [B, 224, 224, 3] → patch features [B, h, w, dim]."""

  def __init__(self, program: Program, info: Mapping):
    self.program, self.name, self.dim = program, info['name'], info['dim']

  def __call__(self, rgb) -> jax.Array:
    return self.program(jnp.asarray(rgb, jnp.float32))


class PointMaeProgram:
  """The exported PointMAE backbone: organised xyz [B, 224, 224, 3] → per-pixel features [B, 224, 224, dim], the
  clouds packed on the host as `backbones.PointMaeBackbone` packs them (`buckets.pack_organised`), each bucket
  size its own program."""

  def __init__(self, programs: Mapping[int, Program], info: Mapping):
    self.programs, self.name, self.dim = programs, info['name'], info['dim']
    self.min_points, self.bucket_sizes = info['min_points'], tuple(info['buckets'])

  def __call__(self, xyz) -> jax.Array:
    b, h, w = np.shape(xyz)[:3]
    points, valid, source = buckets.pack_organised(np.asarray(xyz, np.float32), self.bucket_sizes)
    keys = np.zeros((b, 2), np.uint32)  # DropPath is off in every exported bundle: the keys draw nothing
    return self.programs[points.shape[1]](keys, points, valid, source).reshape(b, h, w, self.dim)


def _point_backbone(folder: Path, manifest: Mapping, info: Mapping | None, programs: Mapping, cache: dict):
  if info is None:
    return None
  if info['name'] == 'fpfh':
    from g2sf_jax import fpfh
    return fpfh.FpfhBackbone(fpfh.FpfhParams(**info['params']))
  return PointMaeProgram({int(size): Program(folder, manifest, spec, cache)
                          for size, spec in programs['point'].items()}, info)


class Bundle(scoring.Scoring):
  """A loaded bundle (`scoring.Model`): score(rgb=…, xyz=…), score_files(rgb=path, xyz=path), score_entries,
  score_stored, as `Detector` offers them."""

  def __init__(self, folder: Path, manifest: dict, batch_size: int | None = None):
    self.folder, self.manifest = folder, manifest
    m = manifest
    self.method, self.class_name, self.dataset = m['method'], m['class_name'], m['dataset']
    self.rows, self.main_row = tuple(m['rows']), m['main_row']
    self.modalities, self.data_modalities = tuple(m['modalities']), tuple(m['data_modalities'])
    self.needs = tuple(m['needs'])
    self.kind = data.get(self.dataset)
    self.batch_size = int(batch_size or m['batch_size'])
    self.unit_mm, self.clean = float(m['unit_mm']), bool(m['clean_scans'])
    programs, cache = m['programs'], {}
    self.rgb_backbone = (RgbProgram(Program(folder, manifest, programs['rgb'], cache), m['rgb_backbone'])
                         if m['rgb_backbone'] else None)
    self.point_backbone = _point_backbone(folder, manifest, m['point_backbone'], programs, cache)
    self.min_points = m['point_backbone']['min_points'] if m['point_backbone'] else 1
    self.scorer = Program(folder, manifest, programs['scorer'], cache)
    self.calibration = Calibration.load(listed(folder, manifest, CALIBRATION_FILE)) if m['calibrated'] else None

  @classmethod
  def load(cls, path: str | Path, batch_size: int | None = None) -> 'Bundle':
    """Verifies the bundle at `path` (`verify`) and loads it for this process's platform."""
    folder = Path(path)
    found = verify(folder)
    platform = current_platform()
    if platform not in found['platforms']:
      raise BundleError(f'{folder}: its programs were lowered for {", ".join(found["platforms"])}, not for this '
                        f'{platform} process; export it again with --platforms including {platform}')
    try:
      return cls(folder, found, batch_size)
    except (KeyError, TypeError, AttributeError) as e:  # a hand-edited manifest whose nested fields are off
      raise BundleError(f'{folder / manifests.MANIFEST}: malformed ({e.__class__.__name__}: {e})') from None

  # scoring.Model

  def features(self, inputs: Sequence[Mapping[str, np.ndarray]], kinds: Sequence[str]) -> dict[str, np.ndarray]:
    return features.extract(self.rgb_backbone, self.point_backbone, inputs, self.batch_size, kinds)

  def scores(self, feats: Mapping[str, np.ndarray]) -> dict[str, scoring.RowScores]:
    out = self.scorer({k: jnp.asarray(feats[k], jnp.float32) for k in self.needs})
    return scoring.rows_from(jax.device_get(out))

  def warm_up(self) -> None:
    """Compiles the RGB backbone for every padded batch size up to `batch_size` (`features.padded_size`) and the
    scorer for every batch size up to it, as scoring calls them (the persistent cache keeps them for a restart)."""
    shapes = self.manifest['feature_shapes']
    sizes = range(1, self.batch_size + 1)
    if self.rgb_backbone is not None:
      for b in sorted({features.padded_size(n, self.batch_size) for n in sizes}):
        self.rgb_backbone(np.zeros((b, 224, 224, 3), np.float32)).block_until_ready()
    for b in sizes:
      jax.block_until_ready(self.scorer({k: jnp.zeros((b, *shapes[k]), jnp.float32) for k in self.needs}))
