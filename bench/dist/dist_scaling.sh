#!/usr/bin/env bash
# Data parallel on this machine: the default recipe (SmolLM2-135M-Instruct) for a few steps
# at one global batch (4 rows x 256 tokens) on 1, 2 and 4 processes, replicated and sharded
# optimizer, each run alone. Prints per configuration: median step time, peak RSS per rank
# (the launcher's wait4 figure; the single process from /usr/bin/time), the store's B/param,
# bytes sent per rank per step as counted by the communicator, the same measured on the loopback
# interface (/proc/net/dev, all ranks and the store's heartbeats together, divided by ranks and
# steps), and the analytic count the start-up table prints.
#   bash bench/dist/dist_scaling.sh [STEPS]        (default 5; the first step is not timed)
#   CONFIGS="2 sharded bf16;4 sharded bf16" bash bench/dist/dist_scaling.sh   (a subset)
# A configuration is "PROCESSES replicated|sharded fp32|bf16" (model.compute).
# Needs build/bin/ramstream and the default model (scripts/fetch_default_model.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
STEPS=${1:-5}
BIN=build/bin/ramstream
MODEL=${RAMSTREAM_CACHE:-$HOME/.cache/ramstream}/models/SmolLM2-135M-Instruct.Q4_1.gguf
[[ -f $MODEL ]] || { echo "dist_scaling: no $MODEL (scripts/fetch_default_model.sh)" >&2; exit 1; }
OUT=$(mktemp -d /tmp/ramstream-dist-scaling.XXXX)
lo_bytes() { awk '$1 == "lo:" { print $10 }' /proc/net/dev; }

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs"
printf '%-22s %8s %10s %12s %8s %12s %12s %12s\n' config ranks ms/step "peak RSS GiB" B/param \
  "counted MB" "loopback MB" "analytic MB"
CONFIGS=${CONFIGS:-"1 replicated fp32;2 replicated fp32;2 sharded fp32;4 replicated fp32;4 sharded fp32;1 replicated bf16;2 replicated bf16;2 sharded bf16;4 sharded bf16"}
IFS=';' read -r -a configs <<<"$CONFIGS"
for cfg in "${configs[@]}"; do
  read -r n mode compute <<<"$cfg"
  accum=$((4 / n))
  dir=$OUT/$n-$mode-$compute
  args=(run smollm2-135m-full-sft "model.path=$MODEL" "output_dir=$dir" checkpoint.resume=never
    "model.compute=$compute" train.batch_size=1 "train.grad_accum=$accum" "train.max_steps=$STEPS"
    eval.before=false eval.at_end=false checkpoint.at_end=false log.every=1 log.progress=lines)
  [[ $mode == sharded ]] && args+=(dist.shard_optimizer=true)
  before=$(lo_bytes)
  if [[ $n == 1 ]]; then
    /usr/bin/time -f 'peak_rss_kib %M' "$BIN" "${args[@]}" >"$dir.log" 2>"$dir.err"
    rss=$(awk '/peak_rss_kib/ { printf "%.2f", $2 / 1048576 }' "$dir.err")
  else
    "$BIN" launch --nproc "$n" -- "${args[@]}" >"$dir.log" 2>"$dir.err"
    rss=$(sed -n 's/.*peak RSS per rank (GiB): //p' "$dir.err" | tr -d ',' |
      awk '{ m = 0; for (i = 2; i <= NF; i += 2) if ($i > m) m = $i; printf "%.2f", m }')
  fi
  after=$(lo_bytes)
  python3 - "$dir" "$n" "$mode $compute" "$rss" "$before" "$after" "$STEPS" <<'PY'
import json, re, statistics, sys
d, n, mode, rss, before, after, steps = sys.argv[1:]
n, steps = int(n), int(steps)
rows = [json.loads(l) for l in open(d + "/metrics.jsonl") if '"loss"' in l]
ms = statistics.median(r["ms"] for r in rows[1:]) if len(rows) > 1 else float("nan")
counted = statistics.median(r.get("comm_mb", 0) for r in rows[1:]) if len(rows) > 1 else 0.0
log = open(d + ".log").read()
bpp = re.search(r"host RAM .*\(([0-9.]+) B/param\)", log).group(1)
m = re.search(r"= ([0-9.]+) MB sent per rank per step", log)
analytic = float(m.group(1)) if m else 0.0
loop = (int(after) - int(before)) / 1e6 / n / steps if n > 1 else 0.0
print(f"{str(n) + ' ' + mode:<22} {n:8d} {ms:10.0f} {rss:>12} {bpp:>8} {counted:12.1f} {loop:12.1f} {analytic:12.1f}")
PY
done
echo "logs: $OUT"
