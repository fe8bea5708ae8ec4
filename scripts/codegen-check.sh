#!/usr/bin/env bash
# Compiles the CUDA kernels to CUDA C++ for an H100 on this machine (no GPU): the offline
# check a kernel change passes before it waits for a GPU session.
#
#   bash scripts/codegen-check.sh                   the whole check (tests/cuda_codegen.rs): the
#                                                   tensor-core convolutions (the table's passes
#                                                   and the tested variants), the warp-shuffle
#                                                   paths and cubek's kernels
#   bash scripts/codegen-check.sh SWEEP_FILE ...    each sweep line's passes with its settings
#
# A sweep line is `label filter [VAR=value ...]` as for scripts/gpu-sweep.sh: the passes of
# the table whose bench ids the filter matches (grep -E) run with the line's variables
# (SSM_CONV_TUNE, ...), so a setting that fails to expand, to compile or to fit in shared
# memory fails here, not in the device call. Prints `label ok|FAILED ...` per line; the
# status is 1 if any line failed.
#
# NVRTC=1 also compiles every kernel as the GPU would (NVRTC 12.9 for sm_90a, then ptxas,
# from the toolkit scripts/cuda-toolkit.sh fetches) and prints its registers a thread and
# spills: a C++ error fails the line, and register pressure shows before any profiler run.
# SASS=DIR (with NVRTC=1) also writes each kernel's machine code to DIR/LABEL/*.sass and
# prints the instructions of its loops by opcode (scripts/cuda-compile.py).
set -uo pipefail
cd "$(dirname "$0")/.."
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
test_cmd=(cargo test -q -p ssm-runtime --features cuda-codegen --test cuda_codegen)
"${test_cmd[@]}" --no-run || exit 2
toolkit=""
if [ "${NVRTC:-0}" = 1 ]; then
  toolkit="$(bash scripts/cuda-toolkit.sh)" || exit 2
fi

# The table's bench ids (tests/cuda_codegen.rs names its cases the same way).
ids=()
for shape in 2x48x112x112x32 2x96x56x56x16 2x192x28x28x8; do
  for kernel in tf32 bf16; do
    for layout in cl cf; do
      for pass in fwd bwd_data bwd_weight bwd; do
        ids+=("conv3d/$shape/${kernel}_$layout/$pass")
      done
    done
  done
done

# Run the tests named by FILTER (with the table's cases CASES, all when empty) with extra
# variables; print their summary, and with NVRTC=1 every kernel's registers and spills.
check() {
  local label="$1" filter="$2" cases="$3"
  shift 3
  local log sources status=0 vars=("$@")
  log="$(mktemp)"
  sources="$(mktemp -d)"
  [ -n "$cases" ] && vars+=("SSM_CODEGEN_CASES=$cases")
  # shellcheck disable=SC2086 # filter is a list of test-harness words
  if env "${vars[@]}" SSM_CODEGEN_DUMP="$sources" "${test_cmd[@]}" -- --nocapture $filter \
    > "$log" 2>&1; then
    echo "$label ok: $(grep -oE '[0-9]+ kernels compiled.*' "$log" | paste -sd ';' -)"
    rm -f "$log"
    if [ -n "$toolkit" ]; then
      SASS="${SASS:+$SASS/$label}" python3 scripts/cuda-compile.py "$toolkit" "$sources"/*.cu \
        | sed "s/^/$label /"
      status="${PIPESTATUS[0]}"
    fi
  else
    echo "$label FAILED (log: $log)"
    grep -E 'panicked|expansion panicked|compilation error|shared memory|not a case' "$log" | head -8
    status=1
  fi
  rm -rf "$sources"
  return "$status"
}

failed=0
if [ "$#" -eq 0 ]; then
  check all "" "" || failed=1
fi
for file in "$@"; do
  while read -r label filter vars; do
    case "$label" in ''|'#'*) continue ;; esac
    cases="$(printf '%s\n' "${ids[@]}" | grep -E -- "$filter" | tr '\n' ' ')"
    if [ -z "$cases" ]; then
      echo "$label skipped: no tensor-core pass of the table matches $filter"
      continue
    fi
    # shellcheck disable=SC2086 # vars is a list of VAR=value words
    check "$label" "--exact tensor_core_convolutions_compile_for_sm90" "$cases" $vars || failed=1
  done < "$file"
done
exit "$failed"
