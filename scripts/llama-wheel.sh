#!/bin/sh
# Build (once) a llama-cpp-python wheel for one flavor and print its path.
#
#   sh scripts/llama-wheel.sh            # cpu: the portable wheel ./dev installs
#   sh scripts/llama-wheel.sh cuda       # + GGML_CUDA (needs nvcc; cuBLAS is fetched from PyPI if absent)
#   sh scripts/llama-wheel.sh rocm       # + GGML_HIP (needs ROCm, default /opt/rocm)
#
# Why: a native (-march=native) build segfaults in the AMX kernels on these machines, and pip's wheel
# cache silently reuses a native wheel even after CMAKE_ARGS change. So we build with explicit
# portable flags, --no-cache-dir, into a wheelhouse of our own keyed by version + flags; every flavor
# keeps the same portable CPU flags (the GPU flavors fall back to the CPU for layers not offloaded).
#
# Environment: LLAMA_CPP_VERSION, LLAMA_CMAKE_ARGS (replaces the flavor's flags), PYTHON,
# CUDA_HOME (default /usr/local/cuda), CUDA_ARCHITECTURES (default "75;86;89": Turing, Ampere, Ada;
# each architecture adds most of the CUDA compile time, about an hour each on 2 cores), CUBLAS_ROOT
# (a folder with include/cublas_v2.h and lib/libcublas.so.*), ROCM_PATH (default /opt/rocm),
# AMDGPU_TARGETS (default "gfx90a;gfx1030;gfx1100").
# A GPU build keeps its build folder under ~/.cache/ollama-appliance/build until the wheel is done:
# when it is interrupted, running the same command again resumes it.
set -eu

FLAVOR="${1:-cpu}"
LLAMA_CPP_VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
PYTHON="${PYTHON:-python3}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ollama-appliance"
CPU_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_RPC=ON"

say() { printf '>>> %s\n' "$*" >&2; }
first() { for f in "$@"; do [ -e "$f" ] && { printf '%s\n' "$f"; return 0; }; done; return 1; }

# cuBLAS is not part of every CUDA toolkit install (this machine's came from NVIDIA's pip wheels
# without it): use the toolkit's, else CUBLAS_ROOT, else NVIDIA's PyPI wheel for the same major.minor.
cublas_root() {
    if [ -n "${CUBLAS_ROOT:-}" ]; then printf '%s\n' "$CUBLAS_ROOT"; return; fi
    if ls "$CUDA_HOME"/lib64/libcublas.so* >/dev/null 2>&1; then printf '%s\n' "$CUDA_HOME"; return; fi
    release=$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
    target="$CACHE/cuda/nvidia-cublas-$release"
    if [ ! -f "$target/nvidia/cu${release%%.*}/include/cublas_v2.h" ]; then
        say "Fetching cuBLAS $release (nvidia-cublas from PyPI) into $target"
        rm -rf "$target.tmp"
        "$PYTHON" -m pip install -q --no-deps --no-cache-dir --target "$target.tmp" \
            "nvidia-cublas==$release.*" >&2
        rm -rf "$target" && mv "$target.tmp" "$target"
    fi
    printf '%s\n' "$target/nvidia/cu${release%%.*}"
}

case "$FLAVOR" in
    cpu)
        : "${LLAMA_CMAKE_ARGS:=$CPU_ARGS}"
        tag="" ;;
    cuda)
        CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
        [ -x "$CUDA_HOME/bin/nvcc" ] || { echo "nvcc not found in $CUDA_HOME/bin (set CUDA_HOME)" >&2; exit 1; }
        if [ -z "${LLAMA_CMAKE_ARGS:-}" ]; then
            cublas=$(cublas_root)
            inc="$cublas/include"
            [ -d "$inc" ] || inc="$cublas/targets/x86_64-linux/include"
            lib=$(dirname "$(first "$cublas"/lib*/libcublas.so*)")
            LLAMA_CMAKE_ARGS="$CPU_ARGS -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES:-75;86;89}"
            LLAMA_CMAKE_ARGS="$LLAMA_CMAKE_ARGS -DCUDAToolkit_ROOT=$CUDA_HOME -DCMAKE_CUDA_COMPILER=$CUDA_HOME/bin/nvcc"
            LLAMA_CMAKE_ARGS="$LLAMA_CMAKE_ARGS -DCUDA_cublas_LIBRARY=$(first "$lib"/libcublas.so*)"
            LLAMA_CMAKE_ARGS="$LLAMA_CMAKE_ARGS -DCUDA_cublasLt_LIBRARY=$(first "$lib"/libcublasLt.so*)"
            LLAMA_CMAKE_ARGS="$LLAMA_CMAKE_ARGS -DCMAKE_CUDA_FLAGS=-I$inc -DCMAKE_CXX_FLAGS=-I$inc"
            # Without the driver stub (lib64/stubs/libcuda.so) ggml cannot link the driver API for its
            # virtual-memory pool; it then uses the plain pool and loads the driver through cudart.
            if ! ls "$CUDA_HOME"/lib64/stubs/libcuda.so >/dev/null 2>&1; then
                LLAMA_CMAKE_ARGS="$LLAMA_CMAKE_ARGS -DGGML_CUDA_NO_VMM=ON"
            fi
        fi
        tag="-cuda" ;;
    rocm)
        ROCM_PATH="${ROCM_PATH:-/opt/rocm}"
        [ -x "$ROCM_PATH/llvm/bin/clang" ] || { echo "ROCm not found in $ROCM_PATH (set ROCM_PATH)" >&2; exit 1; }
        : "${LLAMA_CMAKE_ARGS:=$CPU_ARGS -DGGML_HIP=ON -DAMDGPU_TARGETS=${AMDGPU_TARGETS:-gfx90a;gfx1030;gfx1100} -DCMAKE_C_COMPILER=$ROCM_PATH/llvm/bin/clang -DCMAKE_CXX_COMPILER=$ROCM_PATH/llvm/bin/clang++ -DCMAKE_HIP_COMPILER=$ROCM_PATH/llvm/bin/clang++ -DCMAKE_PREFIX_PATH=$ROCM_PATH}"
        tag="-rocm" ;;
    *) echo "usage: $0 [cpu|cuda|rocm]" >&2; exit 2 ;;
esac

# The cpu key is unchanged from the single-flavor script, so existing wheelhouses stay valid.
key=$(printf '%s\n%s\n' "$LLAMA_CPP_VERSION" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)
house="$CACHE/wheels/llama-cpp-python-$LLAMA_CPP_VERSION$tag-$key"
wheel=$(ls "$house"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ] && command -v flock >/dev/null 2>&1; then
    # One build per key at a time (two `./dev setup`s, a test building the binary beside a setup):
    # the second waits for the first and takes its wheel instead of racing it for "$house.tmp".
    mkdir -p "$CACHE/wheels"
    exec 8>"$CACHE/wheels/.llama-cpp-python-$LLAMA_CPP_VERSION$tag-$key.lock"
    flock 8
    wheel=$(ls "$house"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
fi
if [ -z "$wheel" ]; then
    case "$FLAVOR" in
        cpu) say "Building portable llama-cpp-python $LLAMA_CPP_VERSION (about 8-10 minutes on 2 cores)" ;;
        *) say "Building llama-cpp-python $LLAMA_CPP_VERSION for $FLAVOR (hours on 2 cores); flags: $LLAMA_CMAKE_ARGS" ;;
    esac
    source="llama-cpp-python==$LLAMA_CPP_VERSION"
    set --
    if [ -n "$tag" ]; then
        # A GPU build takes hours: build from a fixed source tree into a kept build folder, so that an
        # interrupted build (a session's time limit, a reboot) resumes where it stopped.
        source="$CACHE/src/llama_cpp_python-$LLAMA_CPP_VERSION"
        if [ ! -f "$source/pyproject.toml" ]; then
            download=$(mktemp -d)
            "$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$download" "llama-cpp-python==$LLAMA_CPP_VERSION" >&2
            mkdir -p "$download/src" "$CACHE/src"
            tar -xzf "$download"/llama_cpp_python-*.tar.gz -C "$download/src"
            rm -rf "$source" && mv "$download/src/llama_cpp_python-$LLAMA_CPP_VERSION" "$source"
            rm -rf "$download"
        fi
        mkdir -p "$CACHE/build"
        if command -v flock >/dev/null 2>&1; then  # one build at a time per build folder
            exec 9>"$CACHE/build/llama-cpp-python-$LLAMA_CPP_VERSION$tag-$key.lock"
            flock 9
            wheel=$(ls "$house"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
            [ -z "$wheel" ] || { printf '%s\n' "$wheel"; exit 0; }
        fi
        set -- --config-settings "build-dir=$CACHE/build/llama-cpp-python-$LLAMA_CPP_VERSION$tag-$key"
        say "Build folder (kept until the wheel is done): $CACHE/build/llama-cpp-python-$LLAMA_CPP_VERSION$tag-$key"
    fi
    rm -rf "$house.tmp" && mkdir -p "$house.tmp"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "$PYTHON" -m pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python "$@" \
        -w "$house.tmp" "$source" >&2
    printf '%s\n' "$LLAMA_CMAKE_ARGS" > "$house.tmp/FLAGS"
    rm -rf "$house" && mv "$house.tmp" "$house"
    [ -z "$tag" ] || rm -rf "$CACHE/build/llama-cpp-python-$LLAMA_CPP_VERSION$tag-$key"
    wheel=$(ls "$house"/llama_cpp_python-*.whl | head -n1)
fi
printf '%s\n' "$wheel"
