#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, after scripts/gpu-stage.sh.
#   bash stage/gpu-run.sh tests [filter]   every staged test binary (SSM_DEVICE=cuda)
#   bash stage/gpu-run.sh bench NAME [..]  one criterion bench binary
#   bash stage/gpu-run.sh ssm ARGS...      the CLI
# Logs and criterion output go to $OUT when set (the device tool returns that folder).
set -uo pipefail
# The staged folder this script sits in (stage/, or another STAGE of gpu-stage.sh); each
# unpacks into its own /tmp folder, so two builds can run in one call.
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=/tmp/ssm-bin
[ "$(basename "$HERE")" = stage ] || BIN="$BIN-$(basename "$HERE")"
# Unpack once per staged build (a sweep calls this script per line; xz takes seconds).
stamp=$(cksum < "$HERE/bin.tar.xz")
if [ "$(cat "$BIN/.stamp" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$BIN" && mkdir -p "$BIN" && tar -C "$BIN" --strip-components=1 -xJf "$HERE/bin.tar.xz"
  echo "$stamp" > "$BIN/.stamp"
fi
export SSM_DEVICE="${SSM_DEVICE:-cuda}"
OUT="${OUT:-/tmp/ssm-out}"
mkdir -p "$OUT"
what="${1:-tests}"; shift || true
case "$what" in
  tests)
    status=0
    for t in "$BIN"/test-*; do
      echo "== $(basename "$t")"
      "$t" --test-threads=4 "$@" 2>&1 | tee -a "$OUT/tests.log" | grep -E "^test result|FAILED|panicked|^ssm tests" || true
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    done
    echo "== summary"; grep -E "^test result" "$OUT/tests.log" | awk '{p+=$4; f+=$6} END {print "passed", p, "failed", f}'
    exit $status ;;
  bench)
    name="$1"; shift
    CRITERION_HOME="$OUT/criterion" "$BIN/bench-$name" --bench "$@" 2>&1 | tee "$OUT/bench-$name.log" ;;
  ssm)
    "$BIN/ssm" "$@" ;;
  *) echo "unknown: $what" >&2; exit 2 ;;
esac
