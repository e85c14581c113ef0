#!/usr/bin/env bash
# Installs the Debian packages if needed (scripts/setup.sh) and builds everything in a Release
# tree with Ninja (ccache is picked up by CMakeLists.txt). Used by scripts/test.sh and
# scripts/finetune.sh.
# Environment: BUILD_DIR (default build), CCACHE_DIR (default ~/.cache/ramstream-ccache),
# CMAKE_ARGS (extra configure arguments, word-split, e.g. "-DCMAKE_PREFIX_PATH=...").
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

export CCACHE_DIR="${CCACHE_DIR:-${HOME:-/root}/.cache/ramstream-ccache}"
mkdir -p "$CCACHE_DIR"

BUILD_DIR="${BUILD_DIR:-build}"
read -r -a extra_cmake_args <<<"${CMAKE_ARGS:-}"

# Ninja, unless BUILD_DIR was already configured with another generator (CMake refuses to switch).
generator=(-G Ninja)
if [[ -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  cached=$(sed -n 's/^CMAKE_GENERATOR:INTERNAL=//p' "$BUILD_DIR/CMakeCache.txt")
  if [[ -n "$cached" && "$cached" != "Ninja" ]]; then
    echo "build.sh: $BUILD_DIR was configured with '$cached'; keeping it (rm -rf $BUILD_DIR for Ninja)" >&2
    generator=()
  fi
fi

cmake -S . -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "${extra_cmake_args[@]}"
cmake --build "$BUILD_DIR" -j"$(nproc)"
