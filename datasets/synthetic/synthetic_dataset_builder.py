"""The generated synthetic dataset (`g2sf_jax.data.synthetic.generate`): MVTec 3D-AD layout and preprocessing.

The manual directory is the folder `generate` wrote; only the name and the class list differ from MVTec.
"""
from g2sf_jax.data import builder, synthetic


class Builder(builder.KindBuilder):
  """Synthetic shapes with geometry, colour and combined defects, preprocessed like MVTec 3D-AD."""

  KIND = synthetic.KIND
  name = 'synthetic'
  BUILDER_CONFIGS = builder.class_configs(synthetic.SHAPES)
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Pass the folder written by g2sf_jax.data.synthetic.generate as raw_dir.'
