#!/usr/bin/env bash
# The accelerator check (issue: accelerator readiness), from the repository
# root on a fresh GPU machine, with nothing but the package registries:
#
#   bash benchmarks/accelerator_check.sh            # GPU: install, check
#   bash benchmarks/accelerator_check.sh --cpu      # CPU, tiny sizes (CI)
#
# On a GPU (nvidia-smi present and no --cpu): a virtual environment
# ($ACCEL_VENV, default .accel_venv) with the project, its test extra and
# jax's CUDA build at setup.py's jax pin (jax[$JAX_CUDA], default cuda13;
# JAX_CUDA=cuda12 for a CUDA 12 driver), the devices printed, then
# benchmarks/accelerator_check.py: the fast tests on the GPU, the train
# step grid, online inference at 1024x2048 and the VPQ evaluator, written
# as one JSON file under benchmarks/results/ and a table. Without a GPU (or
# with --cpu) the same script runs on the CPU at tiny sizes in the current
# Python environment (the project installed, as CI does). Other arguments
# go to accelerator_check.py (--out FILE, --budget_s S, --tests ...).
# The last line is gpu_train_images_per_s=<x>.
set -euo pipefail
cd "$(dirname "$0")/.."

cpu=0
for arg in "$@"; do
  if [[ "$arg" == "--cpu" ]]; then cpu=1; fi
done
if [[ $cpu == 0 ]] && ! command -v nvidia-smi > /dev/null 2>&1; then
  echo "accelerator_check: no nvidia-smi, so no GPU: the CPU check" >&2
  cpu=1
  set -- --cpu "$@"
fi

if [[ $cpu == 0 ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  pin="$(grep -o '"jax>=[^"]*"' setup.py | tr -d '"')"
  spec="jax[${JAX_CUDA:-cuda13}]${pin#jax}"
  venv="${ACCEL_VENV:-$PWD/.accel_venv}"
  python3 -m venv "$venv"
  # shellcheck disable=SC1091
  source "$venv/bin/activate"
  python -m pip install --quiet --upgrade pip
  echo "installing the project with $spec" >&2
  python -m pip install --quiet -e '.[test]' "$spec"
  python -c 'import jax; print("jax", jax.__version__, jax.devices())'
fi

python benchmarks/accelerator_check.py "$@"
