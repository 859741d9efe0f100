"""MVTec 3D-AD as TFDS array_record, one builder config per class, reference preprocessing applied (algorithms.md §1.2).

Reads the user's extracted download from the manual directory, read only; the listing and preprocessing are
`g2sf_jax.data.mvtec3d`. Splits: `train` (with `xyz_orig` for anomaly synthesis) and `test` (algorithms.md §1.1 order).
Load through `g2sf_jax.data.prepared` (this folder is not an importable package).
"""
from g2sf_jax.data import builder, mvtec3d


class Builder(builder.KindBuilder):
  """MVTec 3D-AD, preprocessed once (plane removal, square padding, largest cluster)."""

  KIND = mvtec3d.KIND
  name = 'mvtec3d'
  BUILDER_CONFIGS = builder.class_configs(mvtec3d.CLASSES)
  MANUAL_DOWNLOAD_INSTRUCTIONS = ('Extract mvtec_3d_anomaly_detection.tar.xz and pass the folder that holds '
                                  'bagel/, cable_gland/, ... as the manual directory (raw_dir).')
