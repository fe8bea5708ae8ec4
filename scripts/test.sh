#!/usr/bin/env bash
# Set up a fresh machine and run every check CI runs: formatting, clippy (warnings are
# errors), the whole test suite on the device SSM_DEVICE selects (lavapipe on CI), and the
# CUDA-only kernels compiled offline for an H100 (the `cuda-codegen` target: no GPU, no
# CUDA toolkit; CUDARC_CUDA_VERSION only names the driver API the bindings are built for).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# One-shot builds, small on disk (a CI machine's linker died of a full disk once): no
# incremental state, no debug info in the workspace's test binaries (a panic still names
# its file and line). Say how much room there is, for the log.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-0}"
df -h . | tail -1 | awk '{print "test.sh: " $4 " free on " $6}' >&2
cargo fmt --all --check
cargo clippy --workspace --all-targets -q -- -D warnings
cargo test --workspace -q
CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}" \
  cargo test -q -p ssm-runtime --features cuda-codegen --test cuda_codegen
# The copy settings sweeps ask for that no table pass takes by rule, expanded the same way.
bash scripts/codegen-check.sh scripts/sweeps/copy-variants.txt
