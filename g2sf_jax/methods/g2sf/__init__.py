"""G²SF (Geometry-Guided Score Fusion, SPEC §4): synthesis, fusion dataset, LSPN losses and training, inference.

`method.G2sf` is what the registry (`g2sf_jax.methods`) exposes; the other modules are its stages' pure parts.
"""
