#!/usr/bin/env bash
# The main job on the embedded default (synthetic data, no download): sets up the machine,
# builds the `ssm` CLI in release mode and trains on the device SSM_DEVICE selects
# (auto: CUDA if present, else Vulkan / lavapipe). Extra arguments go to `ssm demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
features=()
if [ "${SSM_DEVICE:-auto}" = cuda ]; then features=(--features cuda); fi
cargo run --release -q -p ssm --bin ssm "${features[@]}" -- demo "$@"
