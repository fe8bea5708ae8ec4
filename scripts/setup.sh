#!/usr/bin/env bash
# Make a fresh Debian/Ubuntu machine able to build and run ssm. Sourced by run.sh and
# test.sh; safe to run again (it only installs what is missing).
#   - a Rust toolchain (rustup, if cargo is absent)
#   - a Vulkan driver: Mesa's lavapipe runs the kernels on the CPU when there is no GPU
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root (or sudo) to run: $*" >&2; return 1; fi
}

if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing Rust with rustup" >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal \
      --component clippy,rustfmt
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

# Vulkan: the loader plus at least one ICD (lavapipe on CPU-only machines).
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 || ! ldconfig -p | grep -q libvulkan.so.1; then
  if command -v apt-get >/dev/null; then
    echo "setup: installing Mesa's Vulkan drivers (lavapipe)" >&2
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y -q mesa-vulkan-drivers libvulkan1 >/dev/null \
      || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q mesa-vulkan-drivers libvulkan1 >/dev/null; }
  else
    echo "setup: no Vulkan driver found and no apt-get; install your distribution's" \
      "Mesa Vulkan drivers (lavapipe) and the Vulkan loader, or use SSM_DEVICE=cuda" >&2
  fi
fi

# Mesa warns when XDG_RUNTIME_DIR is unset; give it a private directory.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  export XDG_RUNTIME_DIR="${TMPDIR:-/tmp}/ssm-xdg-$(id -u)"
  mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
fi
