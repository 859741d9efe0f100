#!/usr/bin/env bash
# Installs everything g2sf-jax needs on a fresh Debian machine into ./.venv (idempotent).
# Debian: libusb-1.0-0 (open3d links it). PyPI: the CPU build of torch 2.13.0 first, so nothing
# pulls the multi-GB CUDA build, then this project with its pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.installed
if [ -f "$stamp" ] && [ "$stamp" -nt setup.cfg ] && [ "$stamp" -nt scripts/install.sh ]; then
  exit 0
fi
if ! ldconfig -p | grep -q 'libusb-1.0.so.0'; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq libusb-1.0-0 >/dev/null
  else
    echo "install.sh: open3d needs Debian's libusb-1.0-0; run: sudo apt-get install libusb-1.0-0" >&2
    exit 1
  fi
fi
pip_install() {  # pip, quiet, without this machine's "location is ignored" noise; fails loudly
  local log; log=$(mktemp)
  if ! .venv/bin/python -m pip install -q "$@" >"$log" 2>&1; then
    grep -v 'is ignored' "$log" >&2; rm -f "$log"; exit 1
  fi
  grep -v 'is ignored' "$log" || true; rm -f "$log"
}
[ -x .venv/bin/python ] || python3 -m venv .venv
pip_install torch==2.13.0
pip_install -e '.[test]'
.venv/bin/python -c "import torch, jax, flax, open3d, tensorflow_datasets; assert '+cpu' in torch.__version__, torch.__version__" \
  || { echo "install.sh: the environment in .venv is incomplete (see pip output above)" >&2; exit 1; }
touch "$stamp"
