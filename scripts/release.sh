#!/bin/sh
# Build and package a release: what installer/install.sh downloads (or installs from with --from).
#
#   sh scripts/release.sh                 # cpu only        -> dist/release/ollama-linux-<arch>.tgz
#   sh scripts/release.sh cpu cuda rocm   # each flavor     -> ...-<arch>-cuda.tgz, ...-<arch>-rocm.tgz
#   sh scripts/release.sh --no-build cpu  # package the binaries already in dist/ (after build-binary.sh)
#
# Each .tgz holds bin/ollama (mode 755); dist/release/sha256sum.txt lists every .tgz in the folder in
# sha256sum format, so flavors built by separate runs (a cuda build takes hours) end up in one
# release. Archives are reproducible: sorted, root-owned, mtime from SOURCE_DATE_EPOCH (default:
# the last commit), gzip without a name or timestamp.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/dist/release"
build=true
flavors=""
for arg in "$@"; do
    case "$arg" in
        --no-build) build=false ;;
        cpu | cuda | rocm) flavors="$flavors $arg" ;;
        *) echo "usage: $0 [--no-build] [cpu] [cuda] [rocm]" >&2; exit 2 ;;
    esac
done
[ -n "$flavors" ] || flavors=cpu

case "$(uname -m)" in
    x86_64 | amd64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) echo "unsupported architecture: $(uname -m)" >&2; exit 1 ;;
esac
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"

mkdir -p "$OUT"
for flavor in $flavors; do
    if [ "$flavor" = cpu ]; then binary="$ROOT/dist/ollama"; name="ollama-linux-$arch.tgz"
    else binary="$ROOT/dist/$flavor/ollama"; name="ollama-linux-$arch-$flavor.tgz"; fi
    if $build; then
        sh scripts/build-binary.sh "$flavor" >/dev/null
    fi
    [ -x "$binary" ] || { echo "no $flavor binary at $binary (run scripts/build-binary.sh $flavor)" >&2; exit 1; }
    stage=$(mktemp -d)
    mkdir "$stage/bin"
    cp "$binary" "$stage/bin/ollama"
    chmod 755 "$stage/bin" "$stage/bin/ollama"
    tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" -cf - bin \
        | gzip -n -6 > "$OUT/$name.tmp"
    mv "$OUT/$name.tmp" "$OUT/$name"
    rm -rf "$stage"
    echo ">>> $OUT/$name ($(du -h "$OUT/$name" | cut -f1)): $("$binary" --version 2>/dev/null | tail -n1)" >&2
done

(cd "$OUT" && sha256sum ollama-linux-*.tgz > sha256sum.txt.tmp && mv sha256sum.txt.tmp sha256sum.txt)
cat "$OUT/sha256sum.txt"
