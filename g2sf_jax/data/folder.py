"""A user's own part as a dataset kind: any folder of scans in the MVTec 3D-AD layout, any class name.

  <root>/<class>/train/good/{rgb/*.png, xyz/*.tiff}      good parts only (required)
  <root>/<class>/validation/<good|defect>/…              optional: scans the detector does not train on, for its
                                                         calibration (else a seeded part of train/good is held out)
  <root>/<class>/test/<good|defect>/{rgb,xyz,gt}/…       optional; a defect scan's gt/ mask is optional too

RGB-only and 3-D-only classes work as in MVTec 3D-AD. Organised xyz TIFFs get the MVTec 3D-AD cleaning (plane
removal, padding, largest cluster, algorithms.md §1.2) unless `--config.clean_scans=false` (a scanner whose clouds
need none: only the square padding is applied). The metrics are those the labels allow (`experiments.report`).
"""
import dataclasses
import functools

from g2sf_jax.data import mvtec3d

KIND = dataclasses.replace(mvtec3d.KIND, name='folder', classes=(),
                           list_class=functools.partial(mvtec3d.list_class, strict=False))
