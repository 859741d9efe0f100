"""Exports one class of a finished run as a bundle (`g2sf_jax.deploy.bundle`): the very programs the evaluation and
`predict` run, lowered with `jax.export` for several platforms at once, and the arrays they take.

The detector is loaded on one device, so every program is a single-device program that any one CPU, GPU or TPU can run;
the batch size is symbolic (PointMAE's point count is fixed per bucket: its program branches on it). A bundle is written
into a private folder next to `out` and renamed into place (`io.atomic_dir`), so `out` is either the old bundle or the
new one; an `out` that is not a bundle is never replaced.
"""
import importlib.metadata
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from g2sf_jax import detector, distributed, io, manifest as manifests
from g2sf_jax.calibration import FILE as CALIBRATION_FILE
from g2sf_jax.deploy.bundle import FORMAT, FORMAT_VERSION, PLATFORMS
from g2sf_jax.errors import ConfigError, OutputExistsError

_PACKAGES = ('g2sf-jax', 'jax', 'jaxlib', 'numpy', 'open3d')
_POINTS = 224 * 224  # pixels of the organised cloud the point backbone maps back to


def _versions() -> dict[str, str]:
  out = {}
  for name in _PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = ''
  return out


def _spec(x) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))


def _export(folder: Path, name: str, fn: Callable, tree, inputs: Sequence[jax.ShapeDtypeStruct],
            platforms: Sequence[str], arrays: str = '') -> dict:
  """Writes `programs/<name>.jax`, `fn(tree, *inputs)` with `tree`'s leaves as its first argument (a list), and
  `arrays/<arrays or name>.npz`, those leaves (once: programs of one network share them); returns the manifest
  entry."""
  leaves, treedef = jax.tree.flatten(tree)

  def program(flat, *args):
    return fn(jax.tree.unflatten(treedef, flat), *args)
  exported = jax.export.export(jax.jit(program), platforms=tuple(platforms))([_spec(x) for x in leaves], *inputs)
  (folder / 'programs').mkdir(exist_ok=True)
  (folder / 'arrays').mkdir(exist_ok=True)
  (folder / 'programs' / f'{name}.jax').write_bytes(exported.serialize())
  array_file = folder / 'arrays' / f'{arrays or name}.npz'
  if not array_file.exists():
    io.save_npz_atomic(array_file, compress=False,
                       **{f'{i:05d}': np.asarray(jax.device_get(x)) for i, x in enumerate(leaves)})
  return {'file': f'programs/{name}.jax', 'arrays': f'arrays/{array_file.name}', 'num_arrays': len(leaves),
          'inputs': [[str(d) for d in s.shape] + [str(s.dtype)] for s in jax.tree.leaves(inputs)]}


def point_program(point, mesh) -> Callable:
  """PointMAE's program as exported: the clouds of a batch one after another on every platform, because its
  grouping sizes its blocks by the batch it is given (a symbolic batch size would leave them unknown). On CPU this is
  the very program `backbones.PointMaeBackbone` runs."""
  return distributed.batch_parallel(point.forward, mesh, replicated=1, batched=4, one_at_a_time=True)


def _point_info(point) -> dict | None:
  if point is None:
    return None
  if point.name == 'fpfh':
    return {'name': 'fpfh', 'dim': point.dim, 'min_points': point.min_points, 'params': dict(point.meta)}
  if point.drop_path != 'off':
    raise ConfigError(f'point_mae.drop_path = {point.drop_path!r}: a bundle scores deterministically; export a run '
                      "with point_mae.drop_path='off'")
  return {'name': point.name, 'dim': point.dim, 'min_points': point.min_points, 'buckets': list(point.bucket_sizes)}


def _is_bundle(path: Path) -> bool:
  """An earlier bundle (a folder with a bundle manifest), which a new export may replace; or an empty folder."""
  return path.is_dir() and (not any(path.iterdir()) or (manifests.read(path) or {}).get('format') == FORMAT)


def export(workdir: str | Path, class_name: str, out: str | Path, method: str | None = None,
           platforms: Sequence[str] = PLATFORMS, log: Callable[[str], None] = lambda _: None) -> dict:
  """Writes the bundle of `class_name` of the `method` run in `workdir` to `out`; returns its manifest."""
  out = Path(out)
  unknown = [p for p in platforms if p not in ('cpu', 'cuda', 'rocm', 'tpu')]
  if unknown or not platforms:
    raise ConfigError(f'platforms {list(platforms)}: expected some of cpu, cuda, rocm, tpu')
  if out.exists() and not _is_bundle(out):
    raise OutputExistsError(f'{out}: exists and is not a bundle; choose another --out (nothing was replaced)')
  mesh = distributed.make_mesh(devices=jax.devices()[:1])
  det = detector.Detector.load(workdir, class_name, method, mesh=mesh)
  run = det.run  # the record read under the readers' lock with the outputs exported
  point = _point_info(det.point_backbone)
  with io.atomic_dir(out, _is_bundle) as tmp:
    b = jax.export.symbolic_shape('b')[0]
    programs, shapes = {}, {}
    if det.rgb_backbone is not None:
      rgb = det.rgb_backbone
      log(f'export: {rgb.name} for {", ".join(platforms)}')
      programs['rgb'] = _export(tmp, 'rgb', rgb.program, rgb.variables,
                                [jax.ShapeDtypeStruct((b, 224, 224, 3), jnp.float32)], platforms)
      shapes['img'] = jax.eval_shape(rgb.program, rgb.variables,
                                     jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)).shape[1:]
    if point is not None and point['name'] != 'fpfh':
      log(f'export: {point["name"]} for {", ".join(platforms)}, one program per point bucket')
      mae = det.point_backbone
      program = point_program(mae, mesh)
      programs['point'] = {str(size): _export(tmp, f'point_{size}', program, mae.variables,
                                              [jax.ShapeDtypeStruct((b, 2), jnp.uint32),
                                               jax.ShapeDtypeStruct((b, size, 3), jnp.float32),
                                               jax.ShapeDtypeStruct((b, size), jnp.bool_),
                                               jax.ShapeDtypeStruct((b, _POINTS), jnp.int32)], platforms, 'point')
                           for size in mae.bucket_sizes}
    if point is not None:
      shapes['pcd'] = (56, 56, point['dim'])
      shapes['pcd224'] = (224, 224, point['dim'])
    log(f'export: the {det.method.name} scorer ({", ".join(det.rows)}) for {", ".join(platforms)}')
    feats = {k: jax.ShapeDtypeStruct((b, *shapes[k]), jnp.float32) for k in det.needs}
    programs['scorer'] = _export(tmp, 'scorer', det.scorer.per_sample, det.scorer.arrays, [feats], platforms)
    if det.calibration is not None:
      det.calibration.save(tmp / CALIBRATION_FILE)
    config = det.config
    rgb_info = None if det.rgb_backbone is None else {
        'name': det.rgb_backbone.name, 'dim': det.rgb_backbone.dim, 'grid': list(shapes['img'][:2])}
    found = manifests.write(tmp, {
        'format': FORMAT, 'format_version': FORMAT_VERSION, 'platforms': list(platforms),
        'method': det.method.name, 'class_name': det.class_name, 'dataset': config.dataset,
        'rows': list(det.rows), 'main_row': det.main_row, 'modalities': list(det.modalities),
        'data_modalities': list(det.data_modalities), 'needs': list(det.needs), 'input_size': [224, 224],
        'feature_shapes': {k: list(shapes[k]) for k in det.needs}, 'batch_size': int(det.batch_size),
        'unit_mm': det.unit_mm, 'clean_scans': det.clean, 'rgb_backbone': rgb_info, 'point_backbone': point,
        'programs': programs, 'calibrated': det.calibration is not None,
        'source': {'workdir': str(Path(workdir).resolve()), 'method': run.method, 'seed': int(config.seed),
                   'outputs': {**run.record['stages'].get('', {}), **run.record['stages'][det.class_name]}},
        'versions': _versions()}, stat_cache=False)
  log(f'export: wrote {out} ({sum(size for size, _ in found["files"].values()) / 2**20:.1f} MiB)')
  return found
