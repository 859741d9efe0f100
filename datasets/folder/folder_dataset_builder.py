"""A user's own parts as TFDS array_record, one builder config per class folder found (`g2sf_jax.data.folder`).

Reads the user's folder from the manual directory, read only: <class>/train/good/, optional validation/ and test/.
Load through `g2sf_jax.data.prepared` (this folder is not an importable package).
"""
from g2sf_jax.data import builder, folder


class Builder(builder.KindBuilder):
  """Any class folder in the MVTec 3D-AD layout; validation/, test/ and ground truth optional."""

  KIND = folder.KIND
  name = 'folder'
  BUILDER_CONFIGS = []  # a config per class found on disk, made by `prepared.prepare`
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Pass the folder that holds one sub-folder per class (<class>/train/good/…).'
