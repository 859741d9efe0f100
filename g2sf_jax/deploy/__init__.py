"""Deployment: a trained class as a self-contained, verified bundle (`bundle.Bundle`), written by `export.export`
from a finished work directory, and served over HTTP by `service.make_app` (`python -m experiments.serve`).

`bundle` needs JAX, NumPy and the image readers only; `export` needs the training stack (it loads the run);
`service` needs the ASGI stack (Starlette, uvicorn).
"""
from g2sf_jax.deploy.bundle import FORMAT_VERSION, PLATFORMS, Bundle, BundleError, verify

__all__ = ['Bundle', 'BundleError', 'FORMAT_VERSION', 'PLATFORMS', 'verify']
