#!/bin/sh
# Build the one-file `ollama` executable for one llama.cpp flavor (build.spec explains the design).
#
#   sh scripts/build-binary.sh            # cpu  -> dist/ollama
#   sh scripts/build-binary.sh cuda       # cuda -> dist/cuda/ollama   (GGML_CUDA; bundles cudart + cuBLAS)
#   sh scripts/build-binary.sh rocm       # rocm -> dist/rocm/ollama   (GGML_HIP; needs ROCm in /opt/rocm)
#
# Each flavor gets its own build environment (build/venv-<flavor>) holding only the app, its
# dependencies, PyInstaller and that flavor's llama-cpp-python wheel (scripts/llama-wheel.sh builds it
# once and caches it), so what a developer installed into .venv never ends up in a release.
# Needs: Python 3.11+ with a shared libpython (pyenv and Debian's python3.11 qualify), a C compiler and
# zlib headers (apt-get install gcc zlib1g-dev) for the launcher; the GPU flavors need their toolkits.
#
# Flavors:
#   cpu   portable AVX2/FMA/F16C llama.cpp, no AMX (DESIGN.md decision 4); ~47 MB.
#   cuda  + GGML_CUDA for CUDA_ARCHITECTURES (default 75;86;89). Bundles the CUDA runtime and cuBLAS
#         (cuBLASLt alone is ~540 MB); the NVIDIA driver comes from the target. Without a driver or
#         GPU it runs on the CPU. The wheel takes hours on 2 cores (resumable: scripts/llama-wheel.sh);
#         measured 2026-11-22: a 699 MB wheel, a 661 MB binary (1.5 min once the wheel is cached), whose
#         `serve` logs "failed to initialize CUDA" on a machine without a driver and then answers on the CPU.
#   rocm  + GGML_HIP for AMDGPU_TARGETS, built with ROCm's clang from ROCM_PATH (default /opt/rocm);
#         bundles hipBLAS/rocBLAS and rocBLAS's kernel files. Build it on a machine with ROCm
#         installed (apt repository of AMD, or the rocm/dev-ubuntu images): sh scripts/build-binary.sh rocm
# Measured on 2 busy cores: cpu about 2-3 minutes once the wheel is cached (+10 minutes for the wheel).
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
FLAVOR="${1:-cpu}"
case "$FLAVOR" in
    cpu) DIST="$ROOT/dist" ;;
    cuda | rocm) DIST="$ROOT/dist/$FLAVOR" ;;
    *) echo "usage: $0 [cpu|cuda|rocm]" >&2; exit 2 ;;
esac
say() { printf '>>> %s\n' "$*" >&2; }

if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then
        PYTHON=$("$ROOT/.venv/bin/python" -c 'import sys; print(sys._base_executable)')
    else
        PYTHON=python3
    fi
fi
command -v "${CC:-cc}" >/dev/null || { echo "a C compiler is needed for the launcher (apt-get install gcc)" >&2; exit 1; }
static_zlib() {
    printf '#include <zlib.h>\nint main(void){return zlibVersion() == 0;}\n' |
        "${CC:-cc}" -x c -o /dev/null - -Wl,-Bstatic -lz -Wl,-Bdynamic 2>/dev/null
}
if ! static_zlib && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "Installing zlib1g-dev (the launcher links zlib statically)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q zlib1g-dev >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q zlib1g-dev >&2; }
fi
static_zlib || { echo "static zlib is needed for the launcher (apt-get install zlib1g-dev)" >&2; exit 1; }

VENV="$ROOT/build/venv-$FLAVOR"
if [ ! -x "$VENV/bin/python" ]; then
    say "Creating the $FLAVOR build environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
wheel=$(PYTHON="$VENV/bin/python" sh scripts/llama-wheel.sh "$FLAVOR")
stamp="$VENV/.installed"
want=$(sha256sum < pyproject.toml | cut -c1-16)-$(basename "$(dirname "$wheel")")
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "Installing the app, its dependencies and PyInstaller into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps "$wheel" >&2
    "$VENV/bin/python" -m pip install -q "$wheel" -e ".[build]" >&2
    echo "$want" > "$stamp"
fi

# PyInstaller bundles the shared libraries the llama.cpp libraries link to; it must be able to find
# them. The CUDA runtime and cuBLAS are bundled; the driver (libcuda.so.1) never is: it comes with the
# NVIDIA driver on the target, and without one the binary runs on the CPU.
flags="$(dirname "$wheel")/FLAGS"
if [ "$FLAVOR" = cuda ]; then
    cublas=$(sed -n 's/.*-DCUDA_cublas_LIBRARY=\([^ ]*\).*/\1/p' "$flags" 2>/dev/null || true)
    LD_LIBRARY_PATH="${cublas:+$(dirname "$cublas"):}${CUDA_HOME:-/usr/local/cuda}/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LD_LIBRARY_PATH
elif [ "$FLAVOR" = rocm ]; then
    LD_LIBRARY_PATH="${ROCM_PATH:-/opt/rocm}/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LD_LIBRARY_PATH
fi

say "Building the $FLAVOR binary into $DIST"
start=$(date +%s)
OLLAMA_BUILD_FLAVOR="$FLAVOR" nice -n 10 "$VENV/bin/python" -m PyInstaller build.spec --noconfirm \
    --log-level WARN --distpath "$DIST" --workpath "$ROOT/build/$FLAVOR" >&2
say "Built $DIST/ollama ($(du -h "$DIST/ollama" | cut -f1)) in $(( $(date +%s) - start )) s"
printf '%s\n' "$DIST/ollama"
