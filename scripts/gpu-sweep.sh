#!/usr/bin/env bash
# Runs on the GPU machine after scripts/gpu-stage.sh: one `model_ops` bench call per line of
# a sweep file, each with its own environment, every log kept under $OUT.
#
#   bash scripts/gpu-sweep.sh SWEEP_FILE
#   STAGE=stage-b bash scripts/gpu-sweep.sh SWEEP_FILE   # the build staged in stage-b/
#
# A line is `label filter [VAR=value ...]` (blank lines and `#` comments skipped), e.g.
#   base   conv3d/2x96.*/bf16_cl/(fwd|bwd_data)
#   nopipe conv3d/2x96.*/bf16_cl/(fwd|bwd_data) SSM_CONV_PIPELINE=0
# Each line runs under a limit of SWEEP_LINE_LIMIT seconds (default 240), so a hung kernel
# costs one line, not the call. Prints `label bench median unit` per bench as it goes
# (stream it: do not pipe the call through `tail`, whose output is lost when the device
# tool's limit stops the call) and keeps each log as $OUT/sweep-<label>.log (labels of
# letters, digits, `_` and `-` only: the device tool leaves out files whose names hold
# other characters).
set -uo pipefail
OUT="${OUT:-/tmp/ssm-out}"
mkdir -p "$OUT"
file="${1:?usage: gpu-sweep.sh SWEEP_FILE}"
# Seconds one line may run (criterion setup and its benches: ~10 s a bench, ~50 s setup).
line_limit="${SWEEP_LINE_LIMIT:-240}"
while read -r label filter vars; do
  case "$label" in ''|'#'*) continue ;; esac
  if [[ ! "$label" =~ ^[A-Za-z0-9_-]+$ ]]; then
    echo "gpu-sweep: label '$label' holds characters other than letters, digits, _ and -" >&2
    exit 2
  fi
  # shellcheck disable=SC2086 # vars is a list of VAR=value words
  timeout "$line_limit" env $vars bash "${STAGE:-stage}/gpu-run.sh" bench model_ops "$filter" \
    > /dev/null 2>&1
  status=$?
  mv "$OUT/bench-model_ops.log" "$OUT/sweep-$label.log"
  # A line stopped at its limit (a hung kernel, say) says so and the sweep goes on.
  [ "$status" -eq 124 ] && echo "$label STOPPED at the ${line_limit} s line limit"
  # The first `time:` line after a bench's name holds its median; a second one (criterion's
  # change against an earlier run in the same folder) is skipped.
  awk -v L="$label" '/^[a-z0-9_]+\//{n=$1; seen=0} /^ *time:/ && !seen {print L, n, $4, $5; seen=1}' "$OUT/sweep-$label.log"
done < "$file"
