#!/usr/bin/env bash
# Builds sprout's Debian package (README "Debian package"):
#
#   scripts/deb.sh              build the release binaries, then the package
#   scripts/deb.sh --no-build   package the binaries already built
#
# The package is described once, in Cargo.toml's [package.metadata.deb]
# (cargo-deb's format). With cargo-deb installed (`cargo install cargo-deb`)
# this runs `cargo deb`; without it (as on machines that reach no registry) it
# builds the same package from the same metadata with dpkg-deb, dependencies
# from dpkg-shlibdeps as cargo-deb's "$auto" does. Either way the package
# lands in $CARGO_TARGET_DIR/debian/ and its path is printed last.
#
# Generated assets (under $CARGO_TARGET_DIR/release/deb/, which the metadata
# names as target/release/deb/): the shipped config.toml with model.path made
# absolute (/var/lib/sproutd/models/...), and the unit with ExecStart in
# /usr/bin, where the package puts the binaries.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sprout-target}"
build=1
case "${1:-}" in
    "") ;;
    --no-build) build=0 ;;
    *) echo "deb.sh: unknown argument ${1} (see the header of this script)" >&2; exit 2 ;;
esac
cd "$root"
if [ "$build" = 1 ]; then
    cargo build --release --locked
fi
for bin in sproutd sproutctl; do
    [ -x "$CARGO_TARGET_DIR/release/$bin" ] || { echo "deb.sh: $CARGO_TARGET_DIR/release/$bin is missing (build first, or drop --no-build)" >&2; exit 1; }
done

gen="$CARGO_TARGET_DIR/release/deb"
mkdir -p "$gen"
model_dir=/var/lib/sproutd/models
sed "s#^path = \"models/#path = \"$model_dir/#" config.toml > "$gen/config.toml"
grep -q "^path = \"$model_dir/" "$gen/config.toml" || { echo "deb.sh: config.toml has no model path to make absolute" >&2; exit 1; }
sed 's#/usr/local/bin/#/usr/bin/#g' systemd/sproutd.service > "$gen/sproutd.service"

if command -v cargo-deb >/dev/null 2>&1; then
    cargo deb --no-build --output "$CARGO_TARGET_DIR/debian/"
    ls -t "$CARGO_TARGET_DIR"/debian/*.deb | head -n 1
    exit 0
fi

command -v dpkg-deb >/dev/null && command -v dpkg-shlibdeps >/dev/null || {
    echo "deb.sh: needs dpkg-deb and dpkg-shlibdeps (Debian packages dpkg and dpkg-dev)" >&2
    exit 1
}
python3 - "$root" "$CARGO_TARGET_DIR" <<'PY'
import hashlib, os, shutil, stat, subprocess, sys, tempfile, tomllib

root, target = sys.argv[1], sys.argv[2]
with open(os.path.join(root, "Cargo.toml"), "rb") as f:
    manifest = tomllib.load(f)
pkg = manifest["package"]
meta = pkg["metadata"]["deb"]
name = meta.get("name", pkg["name"])
version = f'{pkg["version"]}-{meta.get("revision", "1")}'
arch = subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True, text=True).stdout.strip()

def source(path):
    # cargo-deb reads target/release/... from the real target directory.
    if path.startswith("target/release/"):
        return os.path.join(target, "release", path[len("target/release/"):])
    return os.path.join(root, path)

work = tempfile.mkdtemp()
stage = os.path.join(work, name)
binaries = []
for src, dest, mode in meta["assets"]:
    src = source(src)
    if dest.endswith("/"):
        dest += os.path.basename(src)
    out = os.path.join(stage, dest)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    shutil.copyfile(src, out)
    os.chmod(out, int(mode, 8))
    if dest.startswith("usr/bin/"):
        binaries.append(out)

# Dependencies: "$auto" is what the binaries link against, as cargo-deb does.
depends = meta.get("depends", "$auto")
if "$auto" in depends:
    os.makedirs(os.path.join(work, "debian"))
    with open(os.path.join(work, "debian", "control"), "w") as f:
        f.write(f"Source: {name}\n\nPackage: {name}\nArchitecture: any\n")
    shlibs = subprocess.run(["dpkg-shlibdeps", "-O"] + [f"-e{b}" for b in binaries],
                            cwd=work, check=True, capture_output=True, text=True).stdout
    auto = shlibs.strip().split("=", 1)[1]
    depends = ", ".join(d for d in (x.strip() for x in depends.replace("$auto", auto).split(",")) if d)

control = os.path.join(stage, "DEBIAN")
os.makedirs(control)
size_kb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(stage) for f in fs) // 1024
desc = pkg["description"]
extended = "\n".join(" " + (l if l.strip() else ".") for l in meta.get("extended-description", "").strip().splitlines())
fields = [
    ("Package", name), ("Version", version), ("Architecture", arch), ("Maintainer", meta["maintainer"]),
    ("Installed-Size", str(size_kb)), ("Depends", depends), ("Section", meta.get("section", "misc")),
    ("Priority", meta.get("priority", "optional")), ("Homepage", pkg.get("homepage", "")),
    ("Description", desc + ("\n" + extended if extended else "")),
]
with open(os.path.join(control, "control"), "w") as f:
    f.writelines(f"{k}: {v}\n" for k, v in fields if v)
with open(os.path.join(control, "conffiles"), "w") as f:
    f.writelines(c + "\n" for c in meta.get("conf-files", []))
scripts = os.path.join(root, meta["maintainer-scripts"])
for s in ("preinst", "postinst", "prerm", "postrm"):
    p = os.path.join(scripts, s)
    if os.path.exists(p):
        shutil.copyfile(p, os.path.join(control, s))
        os.chmod(os.path.join(control, s), 0o755)
with open(os.path.join(control, "md5sums"), "w") as f:
    for d, _, fs in sorted(os.walk(stage)):
        if d.startswith(control):
            continue
        for name_ in sorted(fs):
            p = os.path.join(d, name_)
            f.write(f"{hashlib.md5(open(p, 'rb').read()).hexdigest()}  {os.path.relpath(p, stage)}\n")
os.makedirs(os.path.join(target, "debian"), exist_ok=True)
deb = os.path.join(target, "debian", f"{name}_{version}_{arch}.deb")
subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", stage, deb], check=True, capture_output=True)
shutil.rmtree(work)
print(deb)
PY
