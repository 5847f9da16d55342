#!/usr/bin/env bash
# Re-create the patched dependencies under vendor/ from the published crates.
#
#   scripts/vendor.sh            re-create every vendored tree: the exact .crate
#                                from crates.io (checked against its sha256),
#                                unpacked, then vendor/patches/<crate>/*.patch
#                                applied in order
#   scripts/vendor.sh --check    re-create them in a temporary folder and compare
#                                with vendor/: fails if the vendored trees differ
#                                from "published crate + listed patches" by a byte
#   scripts/vendor.sh --diff CRATE
#                                print the vendored tree's difference from the
#                                published crate (to write or refresh a patch)
#
# vendor/crates.txt lists each crate as `name version sha256`; vendor/README.md
# says what each patch does, why, its upstream status and its test.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
vendor="$root/vendor"
mode="apply"
diff_crate=""
case "${1:-}" in
    "") ;;
    --check) mode="check" ;;
    --diff) mode="diff"; diff_crate="${2:?usage: vendor.sh --diff CRATE}" ;;
    *) echo "vendor.sh: unknown argument ${1} (see the header of this script)" >&2; exit 2 ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The published .crate: cargo's own download cache when it has it, else crates.io.
fetch_crate() {
    local name="$1" version="$2" sha="$3" out="$4"
    local cached
    cached="$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$name-$version.crate" 2>/dev/null | head -n 1 || true)"
    if [ -n "$cached" ] && echo "$sha  $cached" | sha256sum --check --status; then
        cp "$cached" "$out"
    else
        curl -fsSL --retry 3 -o "$out" "https://static.crates.io/crates/$name/$name-$version.crate"
    fi
    if ! echo "$sha  $out" | sha256sum --check --status; then
        echo "vendor.sh: $name-$version.crate does not match its sha256 $sha" >&2
        exit 1
    fi
}

# Unpacks the pristine crate into $2/<name>-<version>.
unpack() {
    local name="$1" version="$2" sha="$3" dest="$4"
    fetch_crate "$name" "$version" "$sha" "$work/$name-$version.crate"
    mkdir -p "$dest"
    tar -xzf "$work/$name-$version.crate" -C "$dest"
}

apply_patches() {
    local name="$1" tree="$2"
    local p
    for p in "$vendor/patches/$name"/*.patch; do
        [ -e "$p" ] || continue
        if ! patch -d "$tree" -p1 --quiet --forward --no-backup-if-mismatch < "$p"; then
            echo "vendor.sh: $(basename "$p") does not apply to $name" >&2
            exit 1
        fi
    done
}

status=0
while read -r name version sha; do
    case "$name" in ''|'#'*) continue ;; esac
    dir="$name-$version"
    case "$mode" in
        apply)
            unpack "$name" "$version" "$sha" "$work/fresh"
            apply_patches "$name" "$work/fresh/$dir"
            rm -rf "${vendor:?}/$dir"
            mv "$work/fresh/$dir" "$vendor/$dir"
            echo "vendor: $dir re-created with $(ls "$vendor/patches/$name"/*.patch 2>/dev/null | wc -l) patch(es)"
            ;;
        check)
            unpack "$name" "$version" "$sha" "$work/fresh"
            apply_patches "$name" "$work/fresh/$dir"
            if diff -r "$work/fresh/$dir" "$vendor/$dir" > "$work/$dir.diff"; then
                echo "vendor: $dir = published crate + its patches"
            else
                echo "vendor: $dir differs from the published crate + its patches:" >&2
                head -n 40 "$work/$dir.diff" >&2
                status=1
            fi
            ;;
        diff)
            [ "$name" = "$diff_crate" ] || continue
            unpack "$name" "$version" "$sha" "$work/pristine"
            (cd "$work/pristine" && mv "$dir" a && cp -r "$vendor/$dir" b && diff -ruN a b) || true
            ;;
    esac
done < "$vendor/crates.txt"
exit "$status"
