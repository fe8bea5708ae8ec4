#!/usr/bin/env bash
# Runs on the GPU machine after scripts/gpu-stage.sh: the standing GPU work in one command,
# so a device call that starts (they often do not) does all of it.
#
#   bash scripts/gpu-owed.sh tests [SECONDS]   whole suite as four processes on the one GPU:
#                                              each tensor-core conv test (~250 / ~140-160 s
#                                              on an H100), the other conv tests, the rest
#                                              (default limit 420 s)
#   bash scripts/gpu-owed.sh table [bf|tf]     every tensor-core pass, ours then PyTorch's
#                                              (~240 s on an H100: ~120 s a half);
#                                              bf or tf: one type's half, a call each
#   bash scripts/gpu-owed.sh wgrad             the tensor-core weight gradients, likewise
#   bash scripts/gpu-owed.sh sweep FILE        one sweep file (scripts/sweeps/)
#   bash scripts/gpu-owed.sh ab FILE [BASE]    one sweep file on the build in BASE (default
#                                              stage-a: a baseline, see docs/gpu-workflow.md)
#                                              and then on STAGE, one machine, logs apart
#   bash scripts/gpu-owed.sh reduce            the reduce and layout benches, ours then PyTorch's
#   bash scripts/gpu-owed.sh profile LABEL KERNEL BENCH [VAR=value ...]
#                                              ncu of the first launch of the kernel whose name
#                                              starts with KERNEL in the model_ops bench BENCH
#                                              (a filter matching one case): registers,
#                                              occupancy, stall reasons, throughput
#   bash scripts/gpu-owed.sh stalls LABEL KERNEL BENCH [VAR=value ...]
#                                              the same launch: cycles a warp waits a issued
#                                              instruction by reason, tensor-pipe and
#                                              shared-memory load
#   bash scripts/gpu-owed.sh sass LABEL KERNEL BENCH [VAR=value ...]
#                                              the same launch's warp-state samples per SASS
#                                              instruction (ncu's source page, summed by
#                                              opcode and by loop: scripts/ncu_sass.py)
#
# Several steps in one call: `bash scripts/gpu-owed.sh tests 250 && bash
# scripts/gpu-owed.sh table`. STAGE picks the staged folder (default stage); everything
# lands under $OUT (each step in its own folder) and a summary line per result goes to
# stdout, so a call stopped at its limit still returns what finished (the device tool also
# returns only a handful of files: 8 of 13 came back on 2026-12-06).
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE="${STAGE:-stage}"
OUT="${OUT:-/tmp/ssm-out}"
run="$STAGE/gpu-run.sh"
[ -f "$run" ] || { echo "gpu-owed: no $run (stage a build first)" >&2; exit 2; }
# Unpack once, before steps that run processes side by side.
bash "$run" ssm --help > /dev/null 2>&1

# ncu on the first launch of the kernel whose name starts with KERNEL in the model_ops bench
# BENCH, with VAR=value settings before `--` and ncu's own options after it; the report to
# $OUT/profile/LABEL.txt.
ncu_first_launch() {
  local label="$1" kernel="$2" bench="$3" vars=()
  shift 3
  while [ "$#" -gt 0 ] && [ "$1" != -- ]; do vars+=("$1"); shift; done
  shift
  local bin=/tmp/ssm-bin; [ "$STAGE" = stage ] || bin="$bin-$STAGE"
  mkdir -p "$OUT/profile"
  (cd "$bin" && env SSM_DEVICE=cuda "${vars[@]}" timeout 200 ncu --clock-control none \
    -k "regex:^$kernel" --launch-count 1 "$@" ./bench-model_ops --bench "$bench" \
    > "$OUT/profile/$label.txt" 2>&1)
  echo "== $label"
}

what="${1:?usage: gpu-owed.sh tests [SECONDS] | table [bf|tf] | wgrad | sweep FILE | ab FILE [BASE] | reduce | profile|stalls|sass LABEL KERNEL BENCH [VAR=value ...]}"
case "$what" in
  tests)
    limit="${2:-420}"
    # The two tensor-core tests in processes of their own: run with the other conv tests,
    # they held that process's later binaries past 420 s, and together past 300 s
    # (`conv_tensor_cores_match_host` alone takes over 185 s; H100, 2026-12-07).
    OUT="$OUT/tests-tc" timeout "$limit" bash "$run" tests conv_tensor_cores_match_host \
      > /dev/null 2>&1 &
    OUT="$OUT/tests-tcb" timeout "$limit" bash "$run" tests conv_tensor_cores_on_the \
      > /dev/null 2>&1 &
    OUT="$OUT/tests-conv" timeout "$limit" bash "$run" tests conv --skip conv_tensor_cores \
      > /dev/null 2>&1 &
    OUT="$OUT/tests-rest" timeout "$limit" bash "$run" tests --skip conv > /dev/null 2>&1
    wait
    incomplete=0
    for part in tc tcb conv rest; do
      log="$OUT/tests-$part/tests.log"
      echo "== tests $part: $(grep -E '^test result' "$log" 2>/dev/null \
        | awk '{p+=$4; f+=$6} END {print "passed", p+0, "failed", f+0}')"
      # A binary that started ("running N tests") but left no summary was stopped at the
      # limit: its tests count nowhere above, so say so.
      started=$(grep -cE '^running [0-9]+ tests?$' "$log" 2>/dev/null)
      finished=$(grep -cE '^test result' "$log" 2>/dev/null)
      if [ "${started:-0}" -ne "${finished:-0}" ] || [ "${finished:-0}" -eq 0 ]; then
        echo "== tests $part: INCOMPLETE, $(( ${started:-0} - ${finished:-0} )) binary(ies) stopped at the $limit s limit"
        incomplete=1
      fi
      # No match is the good case: do not let it set the step's status.
      grep -E 'FAILED|panicked' "$log" 2>/dev/null | head -20 || true
    done
    # The status: 1 when a part failed or did not finish (stopped at its limit).
    ! grep -qsE 'FAILED|panicked' "$OUT"/tests-{tc,tcb,conv,rest}/tests.log && [ "$incomplete" -eq 0 ] ;;
  table)
    # A half is the sweep file's line of that label (bf: bf16, tf: TF32) and PyTorch's
    # cases of the same type.
    half="${2:-}"
    case "$half" in
      '') torch_cases=(bf16_c tf32_c) ;;
      bf) torch_cases=(bf16_c) ;;
      tf) torch_cases=(tf32_c) ;;
      *) echo "gpu-owed: table takes bf, tf or nothing, not '$half'" >&2; exit 2 ;;
    esac
    dir="$OUT/table${half:+-$half}"
    mkdir -p "$dir"
    sweep="$dir/passes.txt"
    awk -v h="$half" '/^[a-z]/ && (h == "" || $1 == h)' \
      scripts/sweeps/tensor-core-passes.txt > "$sweep"
    OUT="$dir" STAGE="$STAGE" bash scripts/gpu-sweep.sh "$sweep"
    python3 benches/torch_model_ops.py "${torch_cases[@]}" > "$dir/torch_model_ops.log" 2>&1
    cat "$dir"/sweep-*.log > "$dir/bench-model_ops.log"
    python3 benches/model_ops_table.py "$dir/bench-model_ops.log" \
      "$dir/torch_model_ops.log" | tee "$dir/table.md" ;;
  wgrad)
    OUT="$OUT/wgrad" STAGE="$STAGE" bash scripts/gpu-sweep.sh scripts/sweeps/wgrad-rule.txt
    python3 benches/torch_model_ops.py tf32_cl/bwd_weight tf32_cf/bwd_weight \
      bf16_cl/bwd_weight bf16_cf/bwd_weight > "$OUT/wgrad/torch_model_ops.log" 2>&1
    python3 benches/model_ops_table.py "$OUT/wgrad/sweep-rule.log" \
      "$OUT/wgrad/torch_model_ops.log" | tee "$OUT/wgrad/table.md" ;;
  sweep)
    file="${2:?usage: gpu-owed.sh sweep FILE}"
    OUT="$OUT/$(basename "$file" .txt)" STAGE="$STAGE" bash scripts/gpu-sweep.sh "$file" ;;
  ab)
    file="${2:?usage: gpu-owed.sh ab FILE [BASE]}"
    base="${3:-stage-a}"
    [ -f "$base/gpu-run.sh" ] || { echo "gpu-owed: no $base/gpu-run.sh (stage the baseline)" >&2; exit 2; }
    name="$(basename "$file" .txt)"
    echo "== $base"
    OUT="$OUT/$name-a" STAGE="$base" bash scripts/gpu-sweep.sh "$file"
    echo "== $STAGE"
    OUT="$OUT/$name-b" STAGE="$STAGE" bash scripts/gpu-sweep.sh "$file" ;;
  reduce)
    OUT="$OUT/reduce" bash "$run" bench primitives 'reduce|layout' > /dev/null 2>&1
    python3 benches/torch_model_ops.py reduce/ layout/ > "$OUT/reduce/torch_reduce.log" 2>&1
    python3 benches/model_ops_table.py "$OUT/reduce/bench-primitives.log" \
      "$OUT/reduce/torch_reduce.log" | tee "$OUT/reduce/table.md" ;;
  profile)
    label="${2:?usage: gpu-owed.sh profile LABEL KERNEL BENCH [VAR=value ...]}"
    kernel="${3:?kernel name prefix}"; bench="${4:?bench filter}"; shift 4
    ncu_first_launch "$label" "$kernel" "$bench" "$@" -- --section LaunchStats \
      --section Occupancy --section WarpStateStats --section SpeedOfLight
    grep -E "Registers Per Thread|Shared Memory Configuration Size|Dynamic Shared Memory Per|Block Limit (Registers|Shared Mem)|Theoretical Occupancy|Achieved Occupancy|Duration|Warp Cycles Per Issued|Compute \(SM\) Throughput|Memory Throughput|stalled" \
      "$OUT/profile/$label.txt" | sed 's/  */ /g' ;;
  stalls)
    # What a warp waits on, reason by reason (cycles a issued instruction; they sum to
    # "Warp Cycles Per Issued Instruction"), beside the tensor pipe's and shared memory's
    # load: short_scoreboard = a fragment load's result, mio_throttle = the shared-memory
    # queue full, math_pipe_throttle = the tensor pipe busy, barrier / long_scoreboard /
    # wait = barriers, global memory, fixed latency.
    label="${2:?usage: gpu-owed.sh stalls LABEL KERNEL BENCH [VAR=value ...]}"
    kernel="${3:?kernel name prefix}"; bench="${4:?bench filter}"; shift 4
    ncu_first_launch "$label" "$kernel" "$bench" "$@" -- --metrics \
      'regex:^smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio$,regex:^l1tex__data_(pipe_lsu_wavefronts|bank_conflicts_pipe_lsu)_mem_shared(_op_(ld|st|ldsm))?\.sum$,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__average_warp_latency_per_inst_issued.ratio,smsp__inst_executed.sum,gpu__time_duration.sum'
    # (First run on a GPU still owed: if ncu refuses a metric name, its own words show.)
    metrics="$(grep -E "^ +(smsp|sm__|l1tex|gpu__)" "$OUT/profile/$label.txt" | sed 's/  */ /g')" \
      || { tail -5 "$OUT/profile/$label.txt"; exit 1; }
    # The stall reasons largest first (plain decimals); the counts as ncu prints them
    # (thousands separated by commas, which a numeric sort would misread).
    grep "issue_stalled" <<< "$metrics" | sort -t' ' -k4 -g -r
    grep -v "issue_stalled" <<< "$metrics" ;;
  sass)
    label="${2:?usage: gpu-owed.sh sass LABEL KERNEL BENCH [VAR=value ...]}"
    kernel="${3:?kernel name prefix}"; bench="${4:?bench filter}"; shift 4
    ncu_first_launch "$label" "$kernel" "$bench" "$@" -- --section SourceCounters \
      --section WarpStateStats -o "$OUT/profile/$label"
    ncu -i "$OUT/profile/$label.ncu-rep" --page source --csv --print-source sass \
      > "$OUT/profile/$label-sass.csv" 2> "$OUT/profile/$label-sass.err" \
      || { tail -5 "$OUT/profile/$label.txt" "$OUT/profile/$label-sass.err"; exit 1; }
    python3 scripts/ncu_sass.py "$OUT/profile/$label-sass.csv" | tee "$OUT/profile/$label-sass.txt" ;;
  *) echo "gpu-owed: unknown step '$what'" >&2; exit 2 ;;
esac
