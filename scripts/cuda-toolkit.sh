#!/usr/bin/env bash
# Fetches the parts of the CUDA toolkit the offline kernel check needs (no GPU, no root):
# NVRTC (CUDA C++ → PTX, as CubeCL compiles kernels at run time on the GPU), ptxas (PTX →
# sm_90a code, which reports registers and spills), nvdisasm (that code as SASS, the
# instructions the GPU runs) and the headers the kernels include, from NVIDIA's Python
# wheels, into target/cuda-toolkit/ (git-ignored; ~350 MB unpacked).
#
#   bash scripts/cuda-toolkit.sh      # prints the toolkit's folder
#
# Used by `NVRTC=1 bash scripts/codegen-check.sh`. Versions are pinned: 12.9, the newest
# whose NVRTC and ptxas run without a driver (the GPU machines run driver 580, CUDA 13);
# nvdisasm only comes as 13.x wheels, and 13.5 reads 12.9's sm_90a code.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$PWD/target/cuda-toolkit"
if [ -x "$dir/nvidia/cuda_nvcc/bin/ptxas" ] && [ -f "$dir/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" ] \
  && [ -x "$dir/nvidia/cu13/bin/nvdisasm" ]; then
  echo "$dir"
  exit 0
fi
wheels=(
  nvidia-cuda-nvrtc-cu12==12.9.86
  nvidia-cuda-nvcc-cu12==12.9.86
  nvidia-cuda-runtime-cu12==12.9.79
  nvidia-cuda-cccl-cu12==12.9.27
  nvidia-cuda-nvdisasm==13.5.37
)
download="$(mktemp -d)"
trap 'rm -rf "$download"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
  --dest "$download" "${wheels[@]}" >&2
# Unpack beside the final folder and move it in whole, so an interrupted fetch leaves none.
partial="$dir.partial"
rm -rf "$partial"
for wheel in "$download"/*.whl; do
  python3 -m zipfile -e "$wheel" "$partial" >&2
done
chmod +x "$partial/nvidia/cuda_nvcc/bin/ptxas" "$partial/nvidia/cu13/bin/nvdisasm"
rm -rf "$dir"
mv "$partial" "$dir"
echo "$dir"
