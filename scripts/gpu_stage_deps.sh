#!/usr/bin/env bash
# Run on the development machine before a GPU check: copies the header-only dependencies and the
# GoogleTest sources from this machine's Debian packages into .gpu-deps/ (git-ignored), because
# the GPU machine has CMake, ninja, CUDA and a Python torch but no network and no -dev packages.
# Pass .gpu-deps to the device tool's `carry`, then run scripts/gpu_check.sh there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
dest=.gpu-deps
rm -rf "$dest"
mkdir -p "$dest/include" "$dest/share/cmake" "$dest/src"
cp -r /usr/include/nlohmann "$dest/include/"
cp -r /usr/include/CLI "$dest/include/"
cp -r /usr/share/cmake/nlohmann_json /usr/share/cmake/CLI11 "$dest/share/cmake/"
cp -r /usr/src/googletest "$dest/src/"
du -sh "$dest"
