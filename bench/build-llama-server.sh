#!/bin/sh
# Build llama.cpp's own llama-server and llama-bench (the benchmark reference) from the
# vendor/llama.cpp tree of the same llama-cpp-python sdist we ship, with the same portable flags.
# Cached outside the repository; prints the folder holding the binaries.
set -eu
LLAMA_CPP_VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
FLAGS="-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release -DGGML_RPC=ON"
key=$(printf '%s\n%s\n' "$LLAMA_CPP_VERSION" "$FLAGS" | sha256sum | cut -c1-12)
out="${XDG_CACHE_HOME:-$HOME/.cache}/ollama-appliance/llama-server-$LLAMA_CPP_VERSION-$key"
if [ ! -x "$out/llama-server" ]; then
    work=$(mktemp -d)
    echo ">>> Building llama-server $LLAMA_CPP_VERSION (about 11 minutes on 2 cores)" >&2
    python3 -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$LLAMA_CPP_VERSION" >&2
    tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
    src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
    # shellcheck disable=SC2086
    cmake -S "$src" -B "$work/build" $FLAGS -DLLAMA_BUILD_TESTS=OFF >&2
    cmake --build "$work/build" -j"$(nproc)" --target llama-server llama-bench >&2
    mkdir -p "$out.tmp"
    cp "$work"/build/bin/llama-server "$work"/build/bin/llama-bench "$out.tmp/"
    cp "$work"/build/bin/*.so* "$out.tmp/" 2>/dev/null || true
    find "$work/build" -name '*.so*' -exec cp {} "$out.tmp/" \; 2>/dev/null || true
    rm -rf "$out" && mv "$out.tmp" "$out"
    rm -rf "$work"
fi
printf '%s\n' "$out"
