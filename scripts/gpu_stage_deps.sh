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
# Compiled dependencies (hwloc, libnuma, oneTBB): headers, shared libraries, CMake/pkg-config
# files, relocated under $dest. They come from Debian 12; the GPU machine must have a glibc at
# least as new (gpu_check.sh puts $dest/lib on LD_LIBRARY_PATH).
lib=/usr/lib/x86_64-linux-gnu
mkdir -p "$dest/lib/pkgconfig" "$dest/lib/cmake"
cp -r /usr/include/hwloc /usr/include/hwloc.h /usr/include/numa.h /usr/include/numaif.h \
  /usr/include/oneapi /usr/include/tbb "$dest/include/"
cp -a "$lib"/libhwloc.so* "$lib"/libnuma.so* "$lib"/libtbb*.so* "$dest/lib/"
cp -r "$lib/cmake/TBB" "$dest/lib/cmake/"
sed "s|^prefix=.*|prefix=$(realpath "$dest")|; s|^libdir=.*|libdir=\${prefix}/lib|" \
  "$lib/pkgconfig/hwloc.pc" > "$dest/lib/pkgconfig/hwloc.pc"
du -sh "$dest"
