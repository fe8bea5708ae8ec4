#!/usr/bin/env bash
# Build the CUDA test, bench and CLI binaries here and stage them for the GPU machine.
#
#   bash scripts/gpu-stage.sh            # build + stage into ./stage (git-ignored)
#   STAGE=stage-b bash scripts/gpu-stage.sh   # into ./stage-b (keep ./stage for a call
#                                        # in flight, or as the baseline of an A/B run)
#   LEAVE_OUT="bench-scan bench-scan_profile" bash scripts/gpu-stage.sh
#                                        # binaries left out, so a baseline fits beside it
#   SLIM=1 STAGE=stage-b bash scripts/gpu-stage.sh
#                                        # only the runtime tests and the model_ops bench
#                                        # (~5 min instead of ~8, ~11 MiB): kernel A/Bs
#
# The GPU machine has no Rust toolchain and no network: binaries built here (release,
# stripped, CUDA through NVRTC at run time, CUDARC_CUDA_VERSION=13000 for driver 580)
# run there. The staged folder is compressed to fit the device tool's 64 MiB carry limit;
# the script prints the command to pass to the device tool (with carry ["stage"]).
set -euo pipefail
cd "$(dirname "$0")/.."

export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
FEATURES="ssm-runtime/cuda,ssm-autodiff/cuda,ssm/cuda,ssm-benches/cuda,ssm-integration-tests/cuda"
STAGE="${STAGE:-stage}"
case "$STAGE" in stage*) ;; *) echo "STAGE must name a git-ignored stage* folder" >&2; exit 2 ;; esac
rm -rf "$STAGE" && mkdir -p "$STAGE/bin"

# shellcheck source=scripts/stage-lib.sh
source scripts/stage-lib.sh

if [ "${SLIM:-0}" = 1 ]; then
  echo "== building the runtime tests and the model_ops bench (release, cuda)" >&2
  cargo test --release -p ssm-runtime --features cuda --test runtime --no-run \
    --message-format=json-render-diagnostics | executables > "$STAGE/tests.txt"
  cargo bench -p ssm-benches --bench model_ops --features cuda --no-run \
    --message-format=json-render-diagnostics | executables > "$STAGE/benches.txt"
  : > "$STAGE/cli.txt"
else
  echo "== building tests (release, cuda)" >&2
  cargo test --release --workspace --features "$FEATURES" --no-run --message-format=json-render-diagnostics \
    | executables > "$STAGE/tests.txt"
  echo "== building benches (release, cuda)" >&2
  cargo bench --workspace --features "$FEATURES" --no-run --message-format=json-render-diagnostics \
    | executables > "$STAGE/benches.txt"
  echo "== building the CLI (release, cuda)" >&2
  # Same feature set as the tests, so nothing is rebuilt.
  cargo build --release --workspace --features "$FEATURES" --bins --message-format=json-render-diagnostics \
    | executables > "$STAGE/cli.txt"
fi

# Stage under stable names: test-<target>, bench-<target>, ssm.
while read -r name path; do
  # Skip the library crates' unit-test harnesses that hold no device tests (ssm_runtime's
  # does and is staged) and trybuild's compile-fail suite (it needs cargo, which the GPU
  # machine lacks).
  case "$name" in ssm_autodiff|ssm|ssm_benches|ssm_integration_tests|ssm_macros|compile_fail) continue ;; esac
  cp "$path" "$STAGE/bin/test-$name"
done < "$STAGE/tests.txt"
# Only the criterion benches of benches/ (not the libraries' empty bench harnesses).
while read -r name path; do
  if [ -f "benches/benches/$name.rs" ]; then cp "$path" "$STAGE/bin/bench-$name"; fi
done < "$STAGE/benches.txt"
while read -r name path; do if [ "$name" = ssm ]; then cp "$path" "$STAGE/bin/ssm"; fi; done < "$STAGE/cli.txt"
for name in ${LEAVE_OUT:-}; do rm -f "$STAGE/bin/$name"; done
# Which build this is (a stage outlives the checkout it came from).
echo "$STAGE = $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!stage*' || echo '+uncommitted') \
($(git rev-parse --abbrev-ref HEAD)$([ "${SLIM:-0}" = 1 ] && echo ', slim'))" > "$STAGE/COMMIT"
pack_stage "$STAGE"

size=$(du -sm "$STAGE" | cut -f1)
echo "== staged ${size} MiB in $STAGE/ (limit 64 MiB with the working tree)" >&2
echo
echo "Run on the GPU machine (device tool, carry [\"$STAGE\"]):"
if [ "${SLIM:-0}" = 1 ]; then
  echo "  bash $STAGE/gpu-run.sh tests conv       # the runtime tests (filtered) with SSM_DEVICE=cuda"
  echo "  bash $STAGE/gpu-run.sh bench model_ops  # the conv and norm benches"
else
  echo "  bash $STAGE/gpu-run.sh tests            # whole suite with SSM_DEVICE=cuda"
  echo "  bash $STAGE/gpu-run.sh bench primitives # one criterion bench"
fi
