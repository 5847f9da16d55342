#!/usr/bin/env bash
# Everything a fresh machine needs before running or testing Sprout:
# Debian packages, the Rust toolchain check, the default model, the release build.
# Idempotent and quiet when there is nothing to do. Sourced by run.sh and test.sh.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Builds live outside the clone so a new clone reuses them (CI, fresh checkouts).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sprout-target}"

need_pkgs=()
for pkg in cmake libclang-dev pkg-config curl systemd tmux; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    echo "setup: installing Debian packages: ${need_pkgs[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }

bash "$root/scripts/fetch-model.sh"

echo "setup: building (release; a cold build takes ~20 minutes on 2 cores)"
(cd "$root" && cargo build --release --locked --bins)
export SPROUTD="$CARGO_TARGET_DIR/release/sproutd"
export SPROUTCTL="$CARGO_TARGET_DIR/release/sproutctl"
