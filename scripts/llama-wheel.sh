#!/bin/sh
# Build (once) a portable llama-cpp-python wheel and print its path.
#
# Why: a native (-march=native) build segfaults in the AMX kernels on these machines, and pip's wheel
# cache silently reuses a native wheel even after CMAKE_ARGS change. So we build with explicit
# portable flags, --no-cache-dir, into a wheelhouse of our own keyed by version + flags.
set -eu

LLAMA_CPP_VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
: "${LLAMA_CMAKE_ARGS:=-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}"
PYTHON="${PYTHON:-python3}"

key=$(printf '%s\n%s\n' "$LLAMA_CPP_VERSION" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)
house="${XDG_CACHE_HOME:-$HOME/.cache}/ollama-appliance/wheels/llama-cpp-python-$LLAMA_CPP_VERSION-$key"
wheel=$(ls "$house"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
    echo ">>> Building portable llama-cpp-python $LLAMA_CPP_VERSION (about 8-10 minutes on 2 cores)" >&2
    mkdir -p "$house.tmp"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$PYTHON" -m pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python \
        -w "$house.tmp" "llama-cpp-python==$LLAMA_CPP_VERSION" >&2
    rm -rf "$house" && mv "$house.tmp" "$house"
    wheel=$(ls "$house"/llama_cpp_python-*.whl | head -n1)
fi
printf '%s\n' "$wheel"
