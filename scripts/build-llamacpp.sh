#!/usr/bin/env bash
# Builds the llama.cpp anchor for the engine benchmarks (README "Benchmarks"):
# llama.cpp from the sources inside the llama-cpp-python 0.3.36 sdist on PyPI,
# as one shared library plus the `llama-server` binary, and a venv with
# llama-cpp-python using that library. AVX2 build without -march=native (the
# native build crashed on these machines), as the anchor was measured.
#
#   scripts/build-llamacpp.sh                # idempotent; prints the paths it made
#   scripts/build-llamacpp.sh --server-only  # llama-server alone (the tests' upstream)
#
# SPROUT_PIP names the pip that downloads the sdist (default: python3 -m pip).
#
# Results: $LLAMA_DIR/build/bin/llama-server and $LLAMA_DIR/venv/bin/python,
# LLAMA_DIR defaulting to ~/.cache/sprout/llama.cpp. Not part of the README's
# two commands: only the benchmarks need it.
set -euo pipefail

version="0.3.36"
dir="${LLAMA_DIR:-$HOME/.cache/sprout/llama.cpp}"
src="$dir/llama_cpp_python-$version"
build="$dir/build"
mkdir -p "$dir"

server_only=0
[ "${1:-}" = "--server-only" ] && server_only=1
pip_cmd=(${SPROUT_PIP:-python3 -m pip})

if [ ! -d "$src" ]; then
    "${pip_cmd[@]}" download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$dir"
    tar -xzf "$dir/llama_cpp_python-$version.tar.gz" -C "$dir"
fi

if [ ! -x "$build/bin/llama-server" ]; then
    cmake -S "$src/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
        -DBUILD_SHARED_LIBS=ON -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >/dev/null
    cmake --build "$build" --target llama-server --target llama -j "$(nproc)"
fi

if [ "$server_only" = 1 ]; then
    echo "llama-server: $build/bin/llama-server"
    exit 0
fi

if [ ! -x "$dir/venv/bin/python" ] || ! "$dir/venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
    python3 -m venv "$dir/venv"
    # The package's Python code only: it loads the library built above
    # (LLAMA_CPP_LIB_PATH), so llama.cpp is compiled once.
    CMAKE_ARGS="-DLLAMA_BUILD=OFF" "$dir/venv/bin/pip" install --quiet "$src"
fi

echo "llama-server: $build/bin/llama-server"
echo "python:       $dir/venv/bin/python (export LLAMA_CPP_LIB_PATH=$build/bin)"
