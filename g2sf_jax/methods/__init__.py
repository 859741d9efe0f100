"""The registry of detection methods (`config.method`): adding a method is a folder or module here and one line.

Each entry implements `base.Method` (rows, stages, scorer); the runner (`experiments.runner`) and the detector
(`g2sf_jax.detector`) are generic over them.
"""
from g2sf_jax.errors import ConfigError
from g2sf_jax.methods import base
from g2sf_jax.methods.btf import method as btf
from g2sf_jax.methods.cfm import method as cfm
from g2sf_jax.methods.g2sf import method as g2sf
from g2sf_jax.methods.m3dm import method as m3dm
from g2sf_jax.methods.patchcore import method as patchcore

REGISTRY: dict[str, base.Method] = {m.name: m for m in (patchcore.PatchCore(), btf.Btf(), m3dm.M3dm(), cfm.Cfm(),
                                                        g2sf.G2sf())}


def get(name: str) -> base.Method:
  """The method `name` (`config.method`); an unknown name lists the known ones."""
  if name not in REGISTRY:
    raise ConfigError(f'config.method = {name!r} is not a known method; choose one of {sorted(REGISTRY)}')
  return REGISTRY[name]
