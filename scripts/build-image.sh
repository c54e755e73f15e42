#!/bin/sh
# Build the container image of one flavor from its one-file binary (container/Containerfile).
#
#   sh scripts/build-image.sh                  # cpu:  builds dist/ollama if needed -> localhost/ollama-appliance:cpu
#   sh scripts/build-image.sh cuda             # cuda: dist/cuda/ollama             -> localhost/ollama-appliance:cuda
#   sh scripts/build-image.sh --no-build rocm  # use dist/rocm/ollama as it is
#
# Tags: IMAGE:<flavor> and IMAGE:<version>-<flavor> (or the tags in TAGS, space-separated).
# Prints the first IMAGE:tag.  Environment:
#   IMAGE           repository name (default localhost/ollama-appliance; push it to your registry)
#   BASE            base image (default docker.io/library/debian:bookworm-slim; see the Containerfile)
#   BINARY          the one-file binary to put in (default: the flavor's from scripts/build-binary.sh)
#   CONTAINER_TOOL  podman (default when installed) or docker
# Only container/ and the binary are sent to the builder (a throw-away context folder), never
# the checkout.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
build=true
FLAVOR=cpu
for arg in "$@"; do
    case "$arg" in
        --no-build) build=false ;;
        cpu | cuda | rocm) FLAVOR=$arg ;;
        *) echo "usage: $0 [--no-build] [cpu|cuda|rocm]" >&2; exit 2 ;;
    esac
done
say() { printf '>>> %s\n' "$*" >&2; }

IMAGE="${IMAGE:-localhost/ollama-appliance}"
BASE="${BASE:-docker.io/library/debian:bookworm-slim}"
if [ -z "${CONTAINER_TOOL:-}" ]; then
    if command -v podman >/dev/null 2>&1; then CONTAINER_TOOL=podman; else CONTAINER_TOOL=docker; fi
fi
command -v "$CONTAINER_TOOL" >/dev/null 2>&1 || { echo "$CONTAINER_TOOL is not installed (apt-get install podman runc)" >&2; exit 1; }

if [ -z "${BINARY:-}" ]; then
    if [ "$FLAVOR" = cpu ]; then BINARY="$ROOT/dist/ollama"; else BINARY="$ROOT/dist/$FLAVOR/ollama"; fi
    if $build; then
        sh scripts/build-binary.sh "$FLAVOR" >/dev/null
    fi
fi
[ -x "$BINARY" ] || { echo "no binary at $BINARY (sh scripts/build-binary.sh $FLAVOR)" >&2; exit 1; }
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' appliance/__init__.py)
TAGS="${TAGS:-$FLAVOR $version-$FLAVOR}"

mkdir -p "$ROOT/build"
context=$(mktemp -d "$ROOT/build/image-$FLAVOR.XXXXXX")
trap 'rm -rf "$context"' EXIT INT TERM
cp container/Containerfile container/healthcheck.sh "$context/"
ln "$BINARY" "$context/ollama" 2>/dev/null || cp "$BINARY" "$context/ollama"

set -- --build-arg "BASE=$BASE" --build-arg "FLAVOR=$FLAVOR" --build-arg "VERSION=$version"
for tag in $TAGS; do
    set -- "$@" -t "$IMAGE:$tag"
done
case "${CONTAINER_TOOL##*/}" in
    # HEALTHCHECK has no field in the OCI image format: keep the docker format.
    podman | buildah) set -- --format docker "$@" ;;
esac
say "Building $IMAGE ($FLAVOR, $version) from $BINARY on $BASE with $CONTAINER_TOOL"
"$CONTAINER_TOOL" build "$@" -f "$context/Containerfile" "$context" >&2
printf '%s:%s\n' "$IMAGE" "${TAGS%% *}"
