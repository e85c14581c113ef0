#!/usr/bin/env bash
# Run on the GPU machine (repository root, .gpu-deps/ carried from scripts/gpu_stage_deps.sh):
# builds against the Python torch's CUDA libtorch, runs the GPU-labelled tests, the CPU autograd
# tests and the benchmarks, and leaves logs in $OUT (default ./gpu-out).
#   bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
deps="$PWD/.gpu-deps"
[[ -d "$deps" ]] || { echo "gpu_check: $deps missing: run scripts/gpu_stage_deps.sh first" >&2; exit 2; }
python3 - <<'PY' | tee "$out/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))
PY
torch_prefix=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
# The staged prefix moved with the working tree: point pkg-config's prefix at where it is now.
sed -i "s|^prefix=.*|prefix=$deps|" "$deps/lib/pkgconfig/hwloc.pc"
export PKG_CONFIG_PATH="$deps/lib/pkgconfig" LD_LIBRARY_PATH="$deps/lib:${LD_LIBRARY_PATH:-}"
export CPATH="$deps/include:${CPATH:-}" LIBRARY_PATH="$deps/lib:${LIBRARY_PATH:-}"
jobs=$(nproc)

if [[ ! -f "$deps/lib/cmake/GTest/GTestConfig.cmake" ]]; then
  cmake -S "$deps/src/googletest" -B "$deps/build-gtest" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$deps" -DCMAKE_INSTALL_LIBDIR=lib > "$out/gtest-build.log" 2>&1
  cmake --build "$deps/build-gtest" -j"$jobs" --target install >> "$out/gtest-build.log" 2>&1
fi

cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$deps" -DCMAKE_CUDA_ARCHITECTURES=native \
  2>&1 | tee "$out/configure.log" | tail -3
cmake --build build-gpu -j"$jobs" 2>&1 | tee "$out/build.log" | tail -3
ctest --test-dir build-gpu --output-on-failure -j4 2>&1 | tee "$out/ctest.log" | tail -15
build-gpu/bin/cuda_model_test 2>&1 | tee "$out/cuda_model_test.log" | tail -30
build-gpu/bin/pipeline_cuda_test 2>&1 | tee "$out/pipeline_cuda_test.log" | tail -30
build-gpu/bin/memory_test 2>&1 | tee "$out/memory_test.log" | tail -3
build-gpu/bin/h2d_bench --json 2>&1 | tee "$out/h2d_bench.log" | tail -5
build-gpu/bin/autograd_bench --json 2>&1 | tee "$out/autograd_bench.log" | tail -3
