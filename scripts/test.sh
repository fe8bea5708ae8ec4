#!/usr/bin/env bash
# Set up a fresh machine and run every check CI runs: formatting, clippy (warnings are
# errors) and the whole test suite on the device SSM_DEVICE selects (lavapipe on CI).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -q -- -D warnings
cargo test --workspace -q
