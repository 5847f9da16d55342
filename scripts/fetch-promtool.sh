#!/usr/bin/env bash
# Prints the path of a `promtool` (Prometheus' own checker, which the metrics
# test runs on /metrics): one on PATH, else the one from Debian's
# `prometheus` package, unpacked (not installed: no Prometheus server is set
# up or started) under ~/.cache/sprout/promtool. Used by scripts/test.sh.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    command -v promtool
    exit 0
fi
dir="$HOME/.cache/sprout/promtool"
bin="$dir/usr/bin/promtool"
if [ ! -x "$bin" ]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    # apt's download user must be able to write there.
    chmod 755 "$work"
    if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
        # Package lists may be missing on a fresh machine.
        sudo_cmd=""
        [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
        $sudo_cmd apt-get update -qq >/dev/null 2>&1 || true
        (cd "$work" && apt-get download prometheus >/dev/null 2>&1) || {
            echo "fetch-promtool: apt-get download prometheus failed (no Debian mirror?)" >&2
            exit 1
        }
    fi
    mkdir -p "$dir"
    dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$dir" ./usr/bin/promtool
fi
"$bin" --version >/dev/null
echo "$bin"
