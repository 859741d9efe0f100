#!/usr/bin/env bash
# Downloads into ./.whl/ the wheels that a CUDA machine's Python 3.12 needs beside its own jax, flax, optax, orbax,
# torch, scipy, scikit-learn, OpenCV, tifffile, PyYAML, protobuf and pyarrow to run the pipeline with the paper's
# backbones (open3d is not needed there: only the FPFH backbone uses it). For a machine without network access: copy
# .whl/ with the checkout and run `bash scripts/gpu_full_scale.sh` there. Versions are those of ./.venv (install.sh),
# so both machines run the same libraries. Usage: bash scripts/gpu_wheels.sh [python version, default 3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-3.12}
[ -x .venv/bin/python ] || { echo "gpu_wheels.sh: run bash scripts/install.sh first (versions come from .venv)" >&2; exit 1; }
packages=(ml-collections tensorflow-datasets array-record dm-tree immutabledict promise simple-parsing docstring-parser
          tensorflow-metadata googleapis-common-protos termcolor toml albumentations albucore simsimd stringzilla
          pydantic pydantic-core annotated-types typing-inspection)
mkdir -p .whl
for name in "${packages[@]}"; do
  version=$(.venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
  if ls .whl | grep -qi "^${name//-/_}-${version}-"; then continue; fi
  if [ "$name" = promise ]; then  # published as a source archive only: build its pure-Python wheel here
    .venv/bin/python -m pip wheel -q --no-deps -w .whl "promise==$version" 2>&1 | grep -v 'is ignored' || true
    continue
  fi
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "$name==$version" 2>&1 | grep -v 'is ignored' || true
done
missing=()
for name in "${packages[@]}"; do ls .whl | grep -qi "^${name//-/_}-" || missing+=("$name"); done
[ ${#missing[@]} -eq 0 ] || { echo "gpu_wheels.sh: no wheel for: ${missing[*]}" >&2; exit 1; }
du -sh .whl
