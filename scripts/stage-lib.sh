# Sourced by gpu-stage.sh and gpu-stage-commits.sh (from the repository root): what every
# staged folder shares.

# Print "name path" for every executable cargo reports in its JSON messages.
executables() {
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])
'
}

# Strip the binaries in STAGE/bin, put gpu-run.sh beside them and pack bin/ into
# STAGE/bin.tar.xz (compressed to fit the device tool's 64 MiB carry). The caller writes
# STAGE/COMMIT.
pack_stage() {
  local stage="$1"
  strip "$stage"/bin/* 2>/dev/null || true
  cp scripts/gpu-run.sh "$stage/"
  tar -C "$stage" -I "xz -T0 -6" -cf "$stage/bin.tar.xz" bin && rm -rf "$stage/bin"
}
