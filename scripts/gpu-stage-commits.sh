#!/usr/bin/env bash
# Stage the model_ops bench of earlier commits, one bench-only folder each, to time a
# regression commit by commit on the GPU (a sweep file per stage; see gpu-owed.sh ab).
#
#   bash scripts/gpu-stage-commits.sh 16d91cc 02d38d8     # -> stage-16d91cc/, stage-02d38d8/
#
# Each commit is checked out in a worktree under /tmp and built into this checkout's target
# folder (only ssm-runtime and the benches rebuild: ~3 min a commit), so a stage is ~5 MiB
# and several fit one device call's 64 MiB carry. On the GPU machine:
#
#   for s in stage-16d91cc stage-02d38d8; do STAGE=$s OUT=$OUT/$s \
#     bash scripts/gpu-sweep.sh scripts/sweeps/FILE.txt; done
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
# shellcheck source=scripts/stage-lib.sh
source scripts/stage-lib.sh
[ "$#" -gt 0 ] || { echo "usage: gpu-stage-commits.sh COMMIT..." >&2; exit 2; }
for commit in "$@"; do
  short=$(git rev-parse --short "$commit^{commit}")
  tree="/tmp/ssm-commit-$short"
  [ -d "$tree" ] || git worktree add -q --detach "$tree" "$short"
  echo "== building the model_ops bench of $short" >&2
  exe=$(cd "$tree" && CARGO_TARGET_DIR="$root/target" cargo bench -p ssm-benches \
    --bench model_ops --features cuda --no-run --message-format=json-render-diagnostics \
    | executables | awk '$1 == "model_ops" {print $2}')
  stage="stage-$short"
  rm -rf "$stage" && mkdir -p "$stage/bin"
  cp "$exe" "$stage/bin/bench-model_ops"
  echo "$stage = $short (the model_ops bench only)" > "$stage/COMMIT"
  pack_stage "$stage"
  git worktree remove --force "$tree"
  echo "staged $stage ($(du -h "$stage/bin.tar.xz" | cut -f1))" >&2
done
