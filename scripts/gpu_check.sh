#!/usr/bin/env bash
# The GPU machine's check, one command that runs there unchanged: builds the GPU targets against
# the Python torch's CUDA libtorch and the staged dependencies, then runs the GPU tests, the
# benchmarks and the main job on the GPU, and leaves at most 8 files in $OUT (default ./gpu-out).
#   bash scripts/gpu_check.sh               # build (incremental), then every run step
#   bash scripts/gpu_check.sh --build-only  # the build phase alone
#
# Prepare here (Debian 12 development machine):
#   bash scripts/gpu_stage_deps.sh   # .gpu-deps/ (dependencies) and .gpu-model/part-{1,2}
# It prints what each call below carries; tree + carried paths must stay under 64 MiB a call.
#
# Two-call protocol (the default model, 98 MB, cannot travel in one call with the tree): the
# GPU machine keeps ignored paths left by an earlier call while it stays warm (30 s after a call),
# so the model travels in halves:
#   call 1: device run  carry=[".gpu-deps", ".gpu-model/part-1"]  timeout_s=600
#           command="bash scripts/gpu_check.sh --build-only"             (~57 MiB travel)
#   call 2, at once: device run  carry=[".gpu-model/part-2"]  timeout_s=600
#           command="bash scripts/gpu_check.sh"                          (~56 MiB travel)
# Call 2 reuses build-gpu/ and .gpu-deps/ left by call 1 (the build step has nothing to do),
# assembles .gpu-model/cache/models/SmolLM2-135M-Instruct.Q4_1.gguf from the two parts when both
# are there and the sha256 is the one in scripts/fetch_default_model.sh, and runs the steps.
# If the machine went cold in between, call 2 says so (the build fails naming .gpu-deps, the
# main job names the missing part-1); carrying [".gpu-deps", ".gpu-model/part-2"] in call 2
# (~58 MiB) lets it rebuild and run everything but the main job on a fresh machine.
#
# Phases and steps (each with its own log in $OUT, its status and seconds in summary.txt; a
# failed step never stops the later ones):
#   build    unpack .gpu-deps/deps.tar.gz into .gpu-deps/prefix, build GoogleTest there once,
#            configure build-gpu/ (Ninja, Release, CMAKE_PREFIX_PATH=<torch>;.gpu-deps/prefix,
#            CUDA architectures $RAMSTREAM_CUDA_ARCH, default 90 = Hopper), build GPU_TARGETS
#            only, -j$(nproc). A target CMake does not define (yet) is skipped with a note.
#   (a) ctest -L '^gpu$' (the label exactly: plain gpu would also match gpu-layout); fails
#       when any test is skipped: on the GPU machine nothing may
#   (b) pipeline_gpu_layout_test with RAMSTREAM_TEST_DEVICE=cuda (no skips either)
#   (c) h2d_bench --json    (d) llama_step_bench --json
#   (g) offloaded decode: bench/peer_decode/offload_decode.py (ramstream generate streaming the
#       default model under a 64 MiB weight budget vs transformers + accelerate offload with the
#       same GPU memory cap, batches 1/8/32, and the PCIe bound); appended to h2d_bench.log
#   (e) main job: ramstream run smollm2-135m-full-sft engine.device=cuda on the default model;
#       its held-out accuracy lines go into summary.txt
#   (f) planner: planner_accuracy --device cuda --json (probes the machine afresh: predicted vs
#       measured step time, predicted vs NVML GPU joules), then `ramstream plan` for the default
#       recipe on that probe, and the probed profile (YAML) at the end of the same log
# A step whose binary was not built is "missing" (not counted as a failure: the build rows say
# why). $OUT gets summary.txt, build.log, ctest.log, layout_test.log, h2d_bench.log,
# llama_step_bench.log, main_job.log and planner.log (8 files, the device tool's limit; step (g)
# writes into h2d_bench.log). Exit status: 1 when any step failed (FAIL, or not run
# for lack of time), else 0. The whole run keeps inside GPU_CHECK_BUDGET_S (default 570 s) so
# that it ends, summary written, within the device tool's 10-minute command.
# Environment: OUT, RAMSTREAM_CUDA_ARCH (default 90), GPU_CHECK_BUDGET_S (default 570).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$PWD

# The targets this check builds and runs (only these are built, to keep the build short).
GPU_TARGETS=(ramstream pipeline_cuda_test pipeline_gpu_layout_test cuda_model_test h2d_bench
  llama_step_bench planner_accuracy kv_quant_cuda_test inference_cuda_test)

BUILD_DIR=build-gpu
CUDA_ARCH=${RAMSTREAM_CUDA_ARCH:-90}
BUDGET_S=${GPU_CHECK_BUDGET_S:-570}
# Per-step time caps in seconds (each also bounded by what is left of the budget).
CAP_CTEST=240 CAP_LAYOUT=120 CAP_BENCH=120 CAP_MAIN=420 CAP_PLANNER=180 CAP_OFFLOAD=180
DEPS=$ROOT/.gpu-deps
PREFIX=$DEPS/prefix
MODEL_DIR=$ROOT/.gpu-model
MODEL_NAME=SmolLM2-135M-Instruct.Q4_1.gguf

mode=all
case "${1:-}" in
  "") ;;
  --build-only) mode=build ;;
  -h | --help)
    sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "gpu_check: unknown argument '$1' (see --help)" >&2
    exit 2
    ;;
esac

OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
JOBS=$(nproc)
T0=$SECONDS

# --- the summary --------------------------------------------------------------------------------
ROW_NAME=() ROW_STATUS=() ROW_SECS=() ROW_DETAIL=()
NOTES=()
HEADER=()

# row NAME STATUS SECONDS DETAIL...: one line of the table (the DETAIL words joined by spaces);
# the summary is rewritten at once, so a run killed from outside still leaves the steps so far.
row() {
  local detail="${*:4}"
  ROW_NAME+=("$1") ROW_STATUS+=("$2") ROW_SECS+=("$3") ROW_DETAIL+=("${detail//$'\n'/ }")
  write_summary
}

failures() {
  local n=0 s
  for s in "${ROW_STATUS[@]}"; do
    [[ "$s" == FAIL || "$s" == not-run ]] && n=$((n + 1))
  done
  echo "$n"
}

write_summary() {
  local i n
  {
    printf '%s\n' "${HEADER[@]}"
    echo
    printf '%-34s %-8s %7s  %s\n' step status seconds detail
    for i in "${!ROW_NAME[@]}"; do
      printf '%-34s %-8s %7s  %s\n' "${ROW_NAME[i]}" "${ROW_STATUS[i]}" "${ROW_SECS[i]}" \
        "${ROW_DETAIL[i]:0:300}"
    done
    if ((${#NOTES[@]})); then
      echo
      printf '%s\n' "${NOTES[@]}"
    fi
    echo
    n=$(failures)
    echo "elapsed $((SECONDS - T0)) s of a ${BUDGET_S} s budget; mode $mode;" \
      "$( ((n)) && echo "FAIL ($n step(s) failed)" || echo "no step failed")"
  } > "$OUT/summary.txt"
}


collect_versions() {
  local gpu torch nvcc tools
  gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2> /dev/null |
    head -n1)
  torch=$(python3 -c 'import torch
print(torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' \
    2>&1 | tail -n1)
  nvcc=$(nvcc --version 2> /dev/null | sed -n 's/.*release \([^,]*\), \(V[^ ]*\).*/\1 (\2)/p')
  tools="$(cmake --version 2> /dev/null | head -n1); ninja $(ninja --version 2> /dev/null)"
  tools+="; $(g++ --version 2> /dev/null | head -n1); $(ldd --version 2> /dev/null | head -n1)"
  HEADER=(
    "ramstream GPU check, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(uname -srm), $JOBS cores"
    "gpu:    ${gpu:-none (nvidia-smi found no GPU)}"
    "torch:  $torch ($(command -v python3))"
    "nvcc:   ${nvcc:-not found (nor in /usr/local/cuda/bin)}"
    "tools:  $tools"
    "cpu:    $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
  )
}

# --- build phase --------------------------------------------------------------------------------
KNOWN=() UNKNOWN=() BUILT=()

prepare_deps() {
  local log=$1 t=$SECONDS archive=$DEPS/deps.tar.gz sum
  if [[ -f "$archive" ]]; then
    sum=$(sha256sum "$archive" | cut -d' ' -f1)
    if [[ "$(cat "$PREFIX/.archive-sha256" 2> /dev/null)" != "$sum" ]]; then
      echo "== unpacking $archive into $PREFIX" >> "$log"
      rm -rf "$PREFIX" "$DEPS/build-gtest"
      mkdir -p "$PREFIX"
      if ! tar -C "$PREFIX" -xzf "$archive" >> "$log" 2>&1; then
        row deps FAIL $((SECONDS - t)) "could not unpack $archive"
        return 1
      fi
      echo "$sum" > "$PREFIX/.archive-sha256"
    fi
  elif [[ ! -d "$PREFIX" ]]; then
    row deps FAIL $((SECONDS - t)) ".gpu-deps/ missing: run scripts/gpu_stage_deps.sh on the" \
      "development machine and carry .gpu-deps (or the machine went cold since call 1)"
    return 1
  fi
  # GoogleTest travels as sources; built and installed into the prefix once.
  if [[ ! -f "$PREFIX/lib/cmake/GTest/GTestConfig.cmake" ]]; then
    echo "== building GoogleTest into $PREFIX" >> "$log"
    if ! {
      cmake -S "$PREFIX/src/googletest" -B "$DEPS/build-gtest" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF -DCMAKE_INSTALL_PREFIX="$PREFIX" \
        -DCMAKE_INSTALL_LIBDIR=lib &&
        cmake --build "$DEPS/build-gtest" -j"$JOBS" --target install
    } >> "$log" 2>&1; then
      row deps FAIL $((SECONDS - t)) "GoogleTest did not build (build.log)"
      return 1
    fi
    rm -rf "$DEPS/build-gtest"
  fi
  row deps pass $((SECONDS - t)) "prefix .gpu-deps/prefix ($(du -sh "$PREFIX" | cut -f1)), GoogleTest installed"
}

configure() {
  local log=$1 t=$SECONDS torch_prefix err
  if ! torch_prefix=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)' 2>> "$log"); then
    row configure FAIL $((SECONDS - t)) "python3 cannot import torch ($(command -v python3))"
    return 1
  fi
  echo "== cmake -S . -B $BUILD_DIR (torch: $torch_prefix)" >> "$log"
  if ! cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$torch_prefix;$PREFIX" -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" \
    >> "$log" 2>&1; then
    err=$(grep -m1 -A3 'CMake Error' "$log" | tr -s ' \n' ' ')
    row configure FAIL $((SECONDS - t)) "${err:-cmake failed (build.log)}"
    return 1
  fi
  local backend
  backend=$(grep -o 'ramstream: torch .*, CUDA backend [A-Z]*' "$log" | tail -n1)
  if [[ "$backend" != *"CUDA backend ON" ]]; then
    row configure FAIL $((SECONDS - t)) "${backend:-no ramstream status line}: nvcc or the" \
      "CUDA libtorch was not found"
    return 1
  fi
  row configure pass $((SECONDS - t)) "${backend#ramstream: }, CUDA architectures $CUDA_ARCH"
}

build_targets() {
  local log=$1 t=$SECONDS target all_targets
  all_targets=$(ninja -C "$BUILD_DIR" -t targets all 2>> "$log" | sed -n 's/^\([^:]*\): phony$/\1/p')
  for target in "${GPU_TARGETS[@]}"; do
    if grep -qFx "$target" <<< "$all_targets"; then
      KNOWN+=("$target")
    else
      UNKNOWN+=("$target")
    fi
  done
  local failed=()
  if ((${#KNOWN[@]})); then
    echo "== ninja -k 0 ${KNOWN[*]}" >> "$log"
    # All at once, -k 0: a target that fails to build does not stop the others.
    if ninja -C "$BUILD_DIR" -j"$JOBS" -k 0 "${KNOWN[@]}" >> "$log" 2>&1; then
      BUILT=("${KNOWN[@]}")
    else
      # Which ones failed: each again on its own (what built is up to date; a dry run cannot
      # tell, since CMake's glob check makes every `ninja -n` want to re-run CMake).
      for target in "${KNOWN[@]}"; do
        echo "== ninja $target" >> "$log"
        if ninja -C "$BUILD_DIR" -j"$JOBS" "$target" >> "$log" 2>&1; then
          BUILT+=("$target")
        else
          failed+=("$target")
        fi
      done
    fi
  fi
  local detail="${#BUILT[@]} of ${#GPU_TARGETS[@]} targets built" first_error
  first_error=$(grep -m1 'error:' "$log" || grep -m1 'FAILED:' "$log")
  ((${#failed[@]})) && detail+="; FAILED: ${failed[*]} (${first_error:0:200})"
  ((${#UNKNOWN[@]})) && detail+="; not defined in CMake (skipped): ${UNKNOWN[*]}"
  row build "$( ((${#failed[@]})) && echo FAIL || echo pass)" $((SECONDS - t)) "$detail"
  for target in "${GPU_TARGETS[@]}"; do
    if [[ " ${BUILT[*]} " == *" $target "* ]]; then
      row "  target $target" built - ""
    elif [[ " ${failed[*]} " == *" $target "* ]]; then
      row "  target $target" FAIL - "did not build (build.log)"
    else
      row "  target $target" unknown - "CMake defines no such target (yet): skipped"
    fi
  done
  ((${#failed[@]} == 0))
}

build_phase() {
  local log=$OUT/build.log
  : > "$log"
  prepare_deps "$log" || return 1
  configure "$log" || return 1
  build_targets "$log"
}

# --- run phase ----------------------------------------------------------------------------------
MODEL_PATH="" MODEL_REASON=""

prepare_model() {
  local t=$SECONDS dst=$MODEL_DIR/cache/models/$MODEL_NAME expected got missing=()
  expected=$(sed -n 's/^EXPECTED_SHA256="\([0-9a-f]*\)"$/\1/p' scripts/fetch_default_model.sh)
  if [[ -f "$dst" && "$(cat "$dst.sha256" 2> /dev/null)" == "$expected" ]]; then
    MODEL_PATH=$dst
    row model pass $((SECONDS - t)) "${dst#"$ROOT"/} (assembled earlier)"
    return 0
  fi
  [[ -f "$MODEL_DIR/part-1" ]] || missing+=(".gpu-model/part-1 (carried by call 1)")
  [[ -f "$MODEL_DIR/part-2" ]] || missing+=(".gpu-model/part-2 (carried by call 2)")
  if ((${#missing[@]})); then
    MODEL_REASON="default model not assembled: missing ${missing[*]}"
  else
    mkdir -p "$(dirname "$dst")"
    cat "$MODEL_DIR/part-1" "$MODEL_DIR/part-2" > "$dst.tmp"
    got=$(sha256sum "$dst.tmp" | cut -d' ' -f1)
    if [[ "$got" == "$expected" ]]; then
      mv "$dst.tmp" "$dst"
      echo "$expected" > "$dst.sha256"
      MODEL_PATH=$dst
      row model pass $((SECONDS - t)) "assembled ${dst#"$ROOT"/} from part-1 + part-2, sha256 ok"
      return 0
    fi
    rm -f "$dst.tmp"
    MODEL_REASON="default model: part-1 + part-2 ($(stat -c %s "$MODEL_DIR/part-1") +"
    MODEL_REASON+=" $(stat -c %s "$MODEL_DIR/part-2") bytes) have sha256 ${got:0:16}..., expected"
    MODEL_REASON+=" ${expected:0:16}... (re-run scripts/gpu_stage_deps.sh)"
  fi
  row model FAIL $((SECONDS - t)) "$MODEL_REASON"
  return 1
}

# time_for CAP: seconds a step may take (its cap, or what is left of the budget), 0 when none.
time_for() {
  local left=$((BUDGET_S - (SECONDS - T0) - 5))
  ((left < 10)) && left=0
  echo $(($1 < left ? $1 : left))
}

# binary NAME: the path of a built GPU target, or "" (the step is then "missing").
binary() {
  local exe=$BUILD_DIR/bin/$1
  if [[ " ${BUILT[*]} " == *" $1 "* && -x "$exe" ]]; then
    echo "$exe"
  fi
}

missing_row() {
  local step=$1 target=$2 why="not built (build.log)"
  [[ " ${UNKNOWN[*]} " == *" $target "* ]] && why="CMake defines no target $target (yet)"
  row "$step" missing - "$why"
}

# run_logged STEP LOG CAP CMD...: runs CMD under a timeout with its output in LOG; sets RC and
# SECS, and returns 1 (after a row) when the step timed out or had no time left.
run_logged() {
  local step=$1 log=$2 cap t
  cap=$(time_for "$3")
  shift 3
  SECS=0 RC=0
  if ((cap == 0)); then
    row "$step" not-run - "no time left in the ${BUDGET_S} s budget"
    return 1
  fi
  echo "== $* (time limit ${cap} s)" > "$log"
  t=$SECONDS
  timeout -k 10 "$cap" "$@" >> "$log" 2>&1
  RC=$?
  SECS=$((SECONDS - t))
  echo "== exit status $RC after $SECS s" >> "$log"
  if ((RC == 124 || RC == 137)); then
    row "$step" FAIL "$SECS" "timed out after ${cap} s ($(tail -n 3 "$log" | head -n1 | cut -c1-120))"
    return 1
  fi
}

# ctest_list LOG HEADING: the test names ctest lists under HEADING ("The following tests
# FAILED:" or "did not run:"), space-separated.
ctest_list() {
  sed -n "/$2/,/^[^[:space:]]/p" "$1" | sed -n 's/^[[:space:]]*[0-9]* - \([^ ]*\) .*/\1/p' |
    tr '\n' ' '
}

step_ctest() {
  local step="(a) ctest -L gpu" log=$OUT/ctest.log summary failed skipped detail
  # The label exactly: -L takes a regular expression, and "gpu" alone would also pick the CPU
  # tests labelled gpu-layout (step (b) runs those on the GPU).
  run_logged "$step" "$log" "$CAP_CTEST" \
    ctest --test-dir "$BUILD_DIR" -L '^gpu$' --output-on-failure || return
  summary=$(grep -E 'tests passed|tests failed' "$log" | tail -n1)
  failed=$(ctest_list "$log" 'The following tests FAILED:')
  skipped=$(ctest_list "$log" 'The following tests did not run:')
  detail=${summary:-exit status $RC}
  [[ -n "$failed" ]] && detail+="; failed: $failed"
  [[ -n "$skipped" ]] && detail+="; skipped (nothing may skip here): $skipped"
  if grep -q 'No tests were found' "$log"; then
    row "$step" FAIL "$SECS" "no test labelled gpu found"
  elif ((RC != 0)) || [[ -n "$skipped" ]]; then
    row "$step" FAIL "$SECS" "$detail"
  else
    row "$step" pass "$SECS" "$detail"
  fi
}

# gtest_detail LOG: "N passed; failed: A B; skipped: C" from a gtest binary's output.
gtest_detail() {
  local passed failed skipped out
  passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) tests\{0,1\}\..*/\1/p' "$1" | tail -n1)
  failed=$(sed -n '/tests\{0,1\}, listed below:/,$p' "$1" |
    sed -n 's/^\[  FAILED  \] \([^ ,]*\)$/\1/p' | sort -u | tr '\n' ' ')
  skipped=$(sed -n 's/^\[  SKIPPED \] \([^ ,]*\)$/\1/p' "$1" | sort -u | tr '\n' ' ')
  out="${passed:-0} passed"
  [[ -n "$failed" ]] && out+="; failed: $failed"
  [[ -n "$skipped" ]] && out+="; skipped (nothing may skip here): $skipped"
  echo "$out"
}

step_layout() {
  local step="(b) pipeline_gpu_layout_test" log=$OUT/layout_test.log exe detail
  exe=$(binary pipeline_gpu_layout_test)
  [[ -n "$exe" ]] || {
    missing_row "$step" pipeline_gpu_layout_test
    return
  }
  run_logged "$step" "$log" "$CAP_LAYOUT" env RAMSTREAM_TEST_DEVICE=cuda "$exe" || return
  detail="RAMSTREAM_TEST_DEVICE=cuda: $(gtest_detail "$log")"
  if ((RC != 0)); then
    row "$step" FAIL "$SECS" "exit status $RC, $detail"
  elif [[ "$detail" == *skipped* ]]; then
    row "$step" FAIL "$SECS" "$detail"
  else
    row "$step" pass "$SECS" "$detail"
  fi
}

step_bench() {
  local step=$1 target=$2 log=$OUT/$2.log exe
  exe=$(binary "$target")
  [[ -n "$exe" ]] || {
    missing_row "$step" "$target"
    return
  }
  run_logged "$step" "$log" "$CAP_BENCH" "$exe" --json || return
  # The detail is the last output line (the JSON result).
  local last
  last=$(grep -v '^== ' "$log" | grep -v '^[[:space:]]*$' | tail -n1 | cut -c1-240)
  status_row "$step" "$last"
}

# ramstream_and_model STEP: sets EXE to the ramstream binary; with no binary or no default model
# it writes STEP's row saying which and fails (not in a subshell: rows are kept in this shell).
ramstream_and_model() {
  EXE=$(binary ramstream)
  if [[ -z "$EXE" ]]; then
    missing_row "$1" ramstream
    return 1
  fi
  if [[ -z "$MODEL_PATH" ]]; then
    row "$1" FAIL - "$MODEL_REASON"
    return 1
  fi
}

# status_row STEP LAST: STEP's row from the last command's RC, LAST its last output line.
status_row() {
  if ((RC != 0)); then
    row "$1" FAIL "$SECS" "exit status $RC: $2"
  else
    row "$1" pass "$SECS" "$2"
  fi
}

step_offload() {
  local step="(g) offloaded decode vs accelerate" log=$OUT/offload.tmp last
  ramstream_and_model "$step" || return
  run_logged "$step" "$log" "$CAP_OFFLOAD" python3 bench/peer_decode/offload_decode.py \
    --model "$MODEL_PATH" --build-dir "$BUILD_DIR"
  local timed_out=$?
  # Its lines go at the end of h2d_bench.log: $OUT keeps to the device tool's 8 files.
  cat "$log" >> "$OUT/h2d_bench.log"
  last=$(grep -v '^== ' "$log" | grep -v '^[[:space:]]*$' | tail -n1 | cut -c1-240)
  rm -f "$log"
  ((timed_out)) && return
  status_row "$step" "$last"
}

step_main() {
  local step="(e) main job on the GPU" log=$OUT/main_job.log exe run_dir evals
  ramstream_and_model "$step" || return
  exe=$EXE
  run_dir=$(mktemp -d /tmp/ramstream-gpu-main.XXXXXX)
  run_logged "$step" "$log" "$CAP_MAIN" "$exe" run smollm2-135m-full-sft engine.device=cuda \
    model.path="$MODEL_PATH" output_dir="$run_dir"
  local timed_out=$?
  if [[ -f "$run_dir/metrics.jsonl" ]]; then
    {
      echo "== last lines of metrics.jsonl"
      tail -n 5 "$run_dir/metrics.jsonl"
    } >> "$log"
  fi
  rm -rf "$run_dir"
  evals=$(grep -E 'eval|accuracy' "$log" | grep -v '^== ' | head -n 10 | cut -c1-200)
  if [[ -n "$evals" ]]; then
    NOTES+=("held-out accuracy, main job (grep -E 'eval|accuracy' main_job.log):")
    while IFS= read -r line; do NOTES+=("  $line"); done <<< "$evals"
  fi
  ((timed_out)) && return
  if ((RC != 0)); then
    row "$step" FAIL "$SECS" "exit status $RC: $(grep -v '^== ' "$log" | tail -n1 | cut -c1-200)"
  elif ! grep -q 'accuracy' <<< "$evals"; then
    row "$step" FAIL "$SECS" "finished but printed no held-out accuracy line"
  else
    row "$step" pass "$SECS" "$(grep 'accuracy' <<< "$evals" | tail -n1 | sed 's/  */ /g')"
  fi
}

step_planner() {
  local step="(f) planner accuracy (GPU)" log=$OUT/planner.log exe plan_exe last profile
  exe=$(binary planner_accuracy)
  [[ -n "$exe" ]] || {
    missing_row "$step" planner_accuracy
    return
  }
  run_logged "$step" "$log" "$CAP_PLANNER" "$exe" --device cuda --json || return
  last=$(grep -E '^mean \|' "$log" | tr '\n' ' ' | cut -c1-240)
  local rc=$RC
  plan_exe=$(binary ramstream)
  if [[ -n "$plan_exe" && -n "$MODEL_PATH" ]]; then
    profile=$(mktemp /tmp/ramstream-hardware.XXXXXX.yaml)
    {
      echo "== ramstream plan --mode train (default recipe's workload) on the probe just taken"
      timeout 60 "$plan_exe" plan --model "$MODEL_PATH" --mode train --hardware auto \
        --objective time --save-hardware "$profile" 2>&1
      echo "== the probed profile"
      cat "$profile"
    } >> "$log"
    rm -f "$profile"
  fi
  if ((rc != 0)); then
    row "$step" FAIL "$SECS" "exit status $rc: $(grep -v '^== ' "$log" | tail -n1 | cut -c1-200)"
  else
    row "$step" pass "$SECS" "${last:-no summary line}"
  fi
}

# --- main ---------------------------------------------------------------------------------------
# nvcc where the CUDA toolkit lives when it is not on PATH.
if ! command -v nvcc > /dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
# Torch's CMake files add gencode flags of their own; name the same architecture (90 -> 9.0)
# rather than let them probe for a GPU.
if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" && "$CUDA_ARCH" =~ ^([0-9]+)([0-9])([a-z]?)$ ]]; then
  export TORCH_CUDA_ARCH_LIST="${BASH_REMATCH[1]}.${BASH_REMATCH[2]}${BASH_REMATCH[3]}"
fi
# The staged shared libraries, for the binaries and tests (the build tree's RPATH has them too).
export LD_LIBRARY_PATH="$PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

collect_versions
write_summary

build_phase
build_ok=$?

if [[ "$mode" == all ]]; then
  # The tests that want the default model find it through RAMSTREAM_CACHE.
  if prepare_model; then
    export RAMSTREAM_CACHE=$MODEL_DIR/cache
  fi
  step_ctest
  step_layout
  step_bench "(c) h2d_bench --json" h2d_bench
  step_bench "(d) llama_step_bench --json" llama_step_bench
  step_offload
  step_main
  step_planner
fi

write_summary
cat "$OUT/summary.txt"
if (($(failures) > 0 || build_ok != 0)); then
  exit 1
fi
exit 0
