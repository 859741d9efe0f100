#!/usr/bin/env bash
# The full-scale rehearsal (benchmarks/full_scale.py) on a CUDA machine without network access whose python3 has
# jax with CUDA, flax, optax, orbax, torch and scipy: installs the wheels of scripts/gpu_wheels.sh into a private
# folder, checks every import and the GPU, then runs the rehearsal within LIMIT seconds (default 540), so that the
# stages it finished are printed even when the whole class does not fit. Outputs: the table on stdout, and the
# rehearsal's and its stages' logs in $OUT (or ./gpu_full_scale_out). Usage, from the checkout's root:
#   LIMIT=540 bash scripts/gpu_full_scale.sh [benchmarks.full_scale arguments, e.g. --fraction 0.5]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_full_scale_out}
mkdir -p "$out"
site=${TMPDIR:-/tmp}/g2sf_site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
  || { echo "gpu_full_scale.sh: the wheels in .whl/ did not install (make them with scripts/gpu_wheels.sh)" >&2; exit 1; }
export PYTHONPATH="$site" PYTHONUNBUFFERED=1
python3 - <<'PY' || exit 1
import importlib.metadata as m
import jax
for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy', 'torch', 'tensorflow-datasets',
             'array-record', 'ml-collections', 'albumentations', 'opencv-python-headless'):
  print(f'{name} {m.version(name)}')
import albumentations, array_record, ml_collections, tensorflow_datasets  # noqa: F401  (what the wheels bring)
import experiments.run, g2sf_jax.methods.g2sf.synthesis  # noqa: F401  (the pipeline imports on this python)
import os
print('devices:', jax.devices())
assert jax.default_backend() == 'gpu' or os.environ.get('REQUIRE_GPU') == '0', \
    f'JAX runs on {jax.default_backend()}, not on the GPU (REQUIRE_GPU=0 allows a dry run on CPU)'
PY
work=${TMPDIR:-/tmp}/g2sf_full_scale
timeout "${LIMIT:-540}" python3 -m benchmarks.full_scale --workdir "$work" "$@" 2>&1 | tee "$out/full_scale.out"
status=${PIPESTATUS[0]}
cp "$work/full_scale.log" "$out/stages.log" 2>/dev/null
[ "$status" = 124 ] && echo "gpu_full_scale.sh: stopped after ${LIMIT:-540} s; the stages above finished"
exit "$status"
