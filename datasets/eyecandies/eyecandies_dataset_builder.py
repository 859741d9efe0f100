"""Eyecandies as TFDS array_record, one builder config per class, converted to point clouds (algorithms.md §1.3).

Reads the user's extracted download from the manual directory, read only; the listing and conversion are
`g2sf_jax.data.eyecandies`. Load through `g2sf_jax.data.prepared` (this folder is not an importable package).
"""
from g2sf_jax.data import builder, eyecandies


class Builder(builder.KindBuilder):
  """Eyecandies: depth + pose -> organised cloud with the table removed (algorithms.md §1.3)."""

  KIND = eyecandies.KIND
  name = 'eyecandies'
  BUILDER_CONFIGS = builder.class_configs(eyecandies.CLASSES)
  MANUAL_DOWNLOAD_INSTRUCTIONS = ('Extract the Eyecandies class archives and pass the folder that holds '
                                  'CandyCane/, ChocolateCookie/, ... as the manual directory (raw_dir).')
