"""The generated synthetic dataset (`g2sf_jax.synthetic_data.generate`): MVTec 3D-AD layout, so the MVTec builder.

The manual directory is the folder `generate` wrote; only the name and the class list differ from MVTec.
"""
import tensorflow_datasets as tfds

from g2sf_jax import data, synthetic_data

mvtec3d = data.builder_module('mvtec3d')


class Builder(mvtec3d.Builder):
  """Synthetic shapes with geometry, colour and combined defects, preprocessed like MVTec 3D-AD."""

  name = 'synthetic'
  RELEASE_NOTES = {data.VERSION: 'MVTec builder on g2sf_jax.synthetic_data output.'}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=c) for c in synthetic_data.SHAPES]
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Pass the folder written by g2sf_jax.synthetic_data.generate as raw_dir.'
