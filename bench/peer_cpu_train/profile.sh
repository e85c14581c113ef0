#!/usr/bin/env bash
# Where ramstream's CPU training step spends its time: perf samples of peer_train_step's timed
# steps (start-up excluded), grouped into categories.
#   bash bench/peer_cpu_train/profile.sh [fp32|bf16|auto] [keep|recompute]
# Needs linux-perf (apt-get install linux-perf) and a machine where perf may sample (cpu-clock is
# enough: no hardware counters needed) and the files bench/peer_cpu_train/peer_cpu_train.py
# prepares (run it once first). Prints one line per category with its share of all samples.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

compute="${1:-auto}"
activations="${2:-keep}"
cache="${RAMSTREAM_CACHE:-$HOME/.cache/ramstream}/peer"
model="$cache/smollm2-135m-instruct"
tokens="$cache/tokens-2x256.bin"
[[ -f "$tokens" && -d "$model" ]] || {
  echo "profile.sh: run bench/peer_cpu_train/peer_cpu_train.py once first (it prepares $cache)" >&2
  exit 1
}
data=$(mktemp /tmp/ramstream-profile.XXXXXX)
trap 'rm -f "$data" "$data.old"' EXIT

# Start-up (loading, first touch of the store, the GEMM probe) ends well within 12 s here; the
# samples after it are the warm-up and timed steps.
perf record -q -D 12000 -F 999 -o "$data" -- build/bin/peer_train_step --model "$model" \
  --tokens "$tokens" --warmup 2 --steps 16 --compute "$compute" --activations "$activations" \
  > /dev/null 2>&1
perf report -i "$data" --no-children --sort dso,symbol --stdio -g none 2> /dev/null | python3 -c '
import re, sys
cats = {}
def cat(dso, sym):
    if dso.startswith("libopenblas") or dso.startswith("[JIT]") or dso.startswith("libdnnl"):
        return "GEMM (OpenBLAS fp32, oneDNN bf16 JIT)"
    if "adamw" in sym: return "AdamW (optimizer, overlapped)"
    if "kernels" in sym and any(k in sym for k in (
            "swiglu", "forward_avx2", "backward_avx2", "exp_sum", "exp_dot", "max_of",
            "scale_any", "grad_any", "row_max", "scale_row", "softmax_grad")):
        return "vectorised kernels: SwiGLU, softmax and CE rows"
    if "sched" in sym or "yield" in sym or "futex" in sym or "finish_task_switch" in sym:
        return "scheduler: threads yielding / waking"
    if dso.startswith("libm"): return "libm exp/log (softmax, SiLU)"
    if "memmove" in sym or "memcpy" in sym or "memset" in sym: return "memcpy / memset"
    if "bf16" in sym and "chunk" in sym: return "bf16 conversions (kernels/bf16)"
    if dso.startswith("libtorch") or dso.startswith("libc10"): return "ATen elementwise / copies"
    if "tbb" in dso or "parallel_rows" in sym or "autograd" in sym:
        return "ramstream autograd loops (norms, RoPE; softmax, SwiGLU, CE before the kernels)"
    if dso == "[kernel.kallsyms]": return "kernel (page faults, other)"
    return "other"
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+(\[JIT\] tid \d+|\S+)\s+\[.\]\s+(.*)", line)
    if m:
        c = cat(m.group(2), m.group(3))
        cats[c] = cats.get(c, 0.0) + float(m.group(1))
# perf rounds every one of thousands of lines (oneDNN JIT code has one per address), so the
# printed shares sum to more than 100: scale them back to shares of all samples.
total = sum(cats.values()) or 1.0
for c, v in sorted(cats.items(), key=lambda kv: -kv[1]):
    print(f"{100 * v / total:6.1f}%  {c}")
'
