#!/usr/bin/env bash
# Stages, on the Debian 12 development machine, everything the GPU machine needs to build and run
# ramstream beyond what it has (CMake, ninja, g++, nvcc with cuBLAS, a Python torch; no -dev
# packages, no pkg-config, no network), and splits the default model for the two-call protocol
# of scripts/gpu_check.sh (its header has the exact device calls).
#   bash scripts/gpu_stage_deps.sh               # installs the Debian packages first (setup.sh)
#   bash scripts/gpu_stage_deps.sh --no-setup    # packages already there
# Writes (all git-ignored):
#   .gpu-deps/deps.tar.gz   a relocatable prefix, unpacked by gpu_check.sh into .gpu-deps/prefix:
#                           include/; lib/ with the shared libraries and their SONAME symlinks
#                           (hwloc and its libudev, libnuma, oneTBB, PCRE2, utf8proc, yaml-cpp);
#                           lib/cmake/{TBB,yaml-cpp} (Debian's CMake files, rewritten to be
#                           relative to their own location); share/cmake/{nlohmann_json,CLI11};
#                           src/googletest (sources; gpu_check.sh builds and installs it there)
#   .gpu-deps/MANIFEST.txt  the Debian package versions and every file in the archive
#   .gpu-model/part-1, part-2, SHA256SUMS: the default GGUF (scripts/fetch_default_model.sh)
#                           cut in two, each under 50 MB, for the two calls
# and prints what each call carries against the device tool's 64 MiB. The libraries come from
# Debian 12 (glibc 2.36; they need GLIBC_2.34 and GLIBCXX_3.4.29 at most): the GPU machine needs
# a glibc and libstdc++ at least that new. hwloc's dlopen()ed plugins are not staged (the core
# library reads the topology from /sys without them).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ "${1:-}" != "--no-setup" ]]; then
  bash scripts/setup.sh
fi

LIB=/usr/lib/x86_64-linux-gnu
MIB=$((1024 * 1024))
LIMIT=$((64 * MIB))
# Where the default model is cut: part-1 is the first PART1_BYTES, part-2 the rest (49862432 of
# 98362432 bytes); each is under 50 MB, and call 1 (which also carries .gpu-deps) gets the
# smaller one.
PART1_BYTES=48500000

log() { echo "gpu_stage_deps: $*" >&2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
p=$work/prefix
mkdir -p "$p/include" "$p/lib/cmake" "$p/share/cmake" "$p/src"

# --- headers: every file the -dev packages install under /usr/include ------------------------
# (the multiarch /usr/include/x86_64-linux-gnu/ ones too, e.g. hwloc/autogen/config.h, merged
# into include/), with their dates, so that staging again rebuilds nothing on the GPU machine.
DEV_PACKAGES=(libhwloc-dev libnuma-dev libtbb-dev libyaml-cpp-dev libpcre2-dev libutf8proc-dev
  nlohmann-json3-dev libcli11-dev)
for pkg in "${DEV_PACKAGES[@]}"; do
  pkg_files=$(dpkg -L "$pkg" 2> /dev/null) || {
    log "Debian package $pkg is not installed (scripts/setup.sh installs it)"
    exit 1
  }
  while IFS= read -r f; do
    [[ "$f" == /usr/include/* && ! -d "$f" ]] || continue
    rel=${f#/usr/include/}
    rel=${rel#x86_64-linux-gnu/}
    mkdir -p "$p/include/$(dirname "$rel")"
    cp -a "$f" "$p/include/$rel"
  done <<< "$pkg_files"
done

# --- CMake packages of the header-only libraries (relocatable as installed) -------------------
cp -a /usr/share/cmake/nlohmann_json /usr/share/cmake/CLI11 "$p/share/cmake/"

# --- GoogleTest: sources only (gtest, no gmock, no docs/samples/tests) -------------------------
gt=/usr/src/googletest
mkdir -p "$p/src/googletest/googletest"
cp -a "$gt/CMakeLists.txt" "$p/src/googletest/"
cp -a "$gt/googletest/CMakeLists.txt" "$gt/googletest/cmake" "$gt/googletest/include" \
  "$gt/googletest/src" "$p/src/googletest/googletest/"

# --- compiled libraries: each with its SONAME and dev symlinks ---------------------------------
for name in libhwloc libudev libnuma libtbb libtbbmalloc libtbbmalloc_proxy libtbbbind_2_5 \
  libpcre2-8 libutf8proc libyaml-cpp; do
  files=("$LIB/$name".so*)
  [[ -e "${files[0]}" ]] || {
    log "$LIB/$name.so* not found (is its Debian package installed?)"
    exit 1
  }
  cp -a "${files[@]}" "$p/lib/"
done
# Every library a staged one needs must be staged too, or be one the GPU machine surely has.
for so in "$p"/lib/*.so.*; do
  [[ -L "$so" ]] && continue
  for need in $(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    case "$need" in
      libc.so.* | libm.so.* | libgcc_s.so.* | libstdc++.so.* | ld-linux-x86-64.so.*) ;;
      *)
        [[ -e "$p/lib/$need" ]] || {
          log "$(basename "$so") needs $need, which is not staged"
          exit 1
        }
        ;;
    esac
  done
done

# --- CMake packages of TBB and yaml-cpp, made relocatable -------------------------------------
# Debian's exported files find their prefix four levels above themselves (lib/<arch>/cmake/X),
# keep the real /usr path when loaded from there, and name lib/x86_64-linux-gnu/. Staged in
# lib/cmake/X, the prefix is ${CMAKE_CURRENT_LIST_DIR}/../../.. and the libraries are in lib/.
relocate_cmake_package() {
  local name=$1 dst=$p/lib/cmake/$1
  cp -a "$LIB/cmake/$name" "$dst"
  # shellcheck disable=SC2016  # the ${...} are CMake's, not the shell's
  sed -i \
    -e 's|^get_filename_component(_IMPORT_PREFIX "${CMAKE_CURRENT_LIST_FILE}" PATH)$|get_filename_component(_IMPORT_PREFIX "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)|' \
    -e '/^# Use original install prefix when loaded through a$/,/^unset(_realCurr)$/d' \
    -e '/^get_filename_component(_IMPORT_PREFIX "${_IMPORT_PREFIX}" PATH)$/d' \
    -e 's|${_IMPORT_PREFIX}/lib/x86_64-linux-gnu/|${_IMPORT_PREFIX}/lib/|g' \
    "$dst"/*.cmake
  if grep -n '/usr/\|x86_64-linux-gnu' "$dst"/*.cmake | grep -v ':[[:space:]]*#' ||
    ! grep -q 'CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE' "$dst"/*.cmake; then
    log "$dst: the rewrite to a relocatable package did not apply (Debian's files changed?)"
    exit 1
  fi
}
relocate_cmake_package TBB
relocate_cmake_package yaml-cpp

# --- a test of the staged prefix: CMake finds every package from it ---------------------------
mkdir -p "$work/probe"
cat > "$work/probe/CMakeLists.txt" << 'EOF'
cmake_minimum_required(VERSION 3.22)
project(probe LANGUAGES CXX)
find_package(TBB REQUIRED COMPONENTS tbbmalloc)
find_package(yaml-cpp REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(CLI11 REQUIRED)
get_target_property(tbb TBB::tbb IMPORTED_LOCATION_NONE)
get_target_property(yaml yaml-cpp IMPORTED_LOCATION_NONE)
foreach(f ${tbb} ${yaml})
  if(NOT f MATCHES "^${STAGED}/lib/")
    message(FATAL_ERROR "${f} is not in the staged prefix ${STAGED}")
  endif()
endforeach()
EOF
# Moved away from where it was made, as on the GPU machine.
mv "$p" "$work/moved"
p=$work/moved
if ! cmake -S "$work/probe" -B "$work/probe/build" -DCMAKE_PREFIX_PATH="$p" -DSTAGED="$p" \
  -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF > "$work/probe.log" 2>&1; then
  cat "$work/probe.log" >&2
  log "the staged prefix does not configure (above)"
  exit 1
fi

# --- pack -------------------------------------------------------------------------------------
rm -rf .gpu-deps
mkdir -p .gpu-deps
tar -C "$p" --sort=name --owner=0 --group=0 --numeric-owner -czf .gpu-deps/deps.tar.gz .
{
  echo "# .gpu-deps/deps.tar.gz, staged $(date -u '+%Y-%m-%d %H:%M UTC') by scripts/gpu_stage_deps.sh"
  echo "# Debian packages:"
  dpkg-query -W -f='#   ${Package} ${Version}\n' libhwloc15 libudev1 libnuma1 libtbb12 \
    libtbbmalloc2 libtbbbind-2-5 libpcre2-8-0 libutf8proc2 libyaml-cpp0.7 nlohmann-json3-dev \
    libcli11-dev googletest libhwloc-dev libtbb-dev libyaml-cpp-dev libpcre2-dev \
    libutf8proc-dev libnuma-dev 2> /dev/null
  echo "# Files:"
  tar -tvzf .gpu-deps/deps.tar.gz
} > .gpu-deps/MANIFEST.txt

# --- the default model, in two parts ----------------------------------------------------------
model=$(bash scripts/fetch_default_model.sh)
rm -rf .gpu-model
mkdir -p .gpu-model
head -c "$PART1_BYTES" "$model" > .gpu-model/part-1
tail -c +"$((PART1_BYTES + 1))" "$model" > .gpu-model/part-2
expected=$(sed -n 's/^EXPECTED_SHA256="\([0-9a-f]*\)"$/\1/p' scripts/fetch_default_model.sh)
got=$(cat .gpu-model/part-1 .gpu-model/part-2 | sha256sum | cut -d' ' -f1)
[[ "$got" == "$expected" ]] || {
  log "the two parts do not rebuild the model (sha256 $got, expected $expected)"
  exit 1
}
(cd .gpu-model && sha256sum part-1 part-2 && echo "$expected  $(basename "$model")") \
  > .gpu-model/SHA256SUMS

# --- what travels -----------------------------------------------------------------------------
# The tree as the device tool measures it: tracked and untracked-not-ignored files.
tree_bytes=$(git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [[ -f "$f" && ! -L "$f" ]] && printf '%s\0' "$f"; done |
  du -cb --files0-from=- | tail -n1 | cut -f1)
deps_bytes=$(du -cb .gpu-deps | tail -n1 | cut -f1)
part1_bytes=$(stat -c %s .gpu-model/part-1)
part2_bytes=$(stat -c %s .gpu-model/part-2)
call1=$((tree_bytes + deps_bytes + part1_bytes))
call2=$((tree_bytes + part2_bytes))
mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }
echo "gpu_stage_deps: .gpu-deps $(du -sh .gpu-deps | cut -f1) ($(mib "$deps_bytes");" \
  "unpacked $(du -sh "$p" | cut -f1)), .gpu-model/part-1 $(mib "$part1_bytes")," \
  "part-2 $(mib "$part2_bytes")"
echo "gpu_stage_deps: call 1 carries tree $(mib "$tree_bytes") + .gpu-deps + part-1 = $(mib "$call1")" \
  "(limit 64 MiB, $(mib $((LIMIT - call1))) to spare)"
echo "gpu_stage_deps: call 2 carries tree $(mib "$tree_bytes") + part-2 = $(mib "$call2")" \
  "(limit 64 MiB, $(mib $((LIMIT - call2))) to spare)"
if ((call1 >= LIMIT || call2 >= LIMIT)); then
  log "a call would carry more than 64 MiB"
  exit 1
fi
