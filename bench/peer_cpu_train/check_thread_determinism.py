#!/usr/bin/env python3
"""The CPU training step gives the same bits on one CPU as on all of them (ctest, label bench-smoke).

    python3 check_thread_determinism.py PEER_TRAIN_STEP MODEL_DIR [RECIPE]

Runs peer_train_step (4 steps, random tokens, fp32 and bf16 compute) pinned to one CPU and to
every CPU this process may use, and compares the losses bit for bit: the thread count changes
how oneDNN, ATen and the TBB loops split the work, never a result. The one exception is
OpenBLAS's own thread count: its single-threaded sgemm takes other kernels (measured here: the
first fp32 loss differs in the 8th significant digit), so the fp32 runs keep OpenBLAS at one
thread on both sides and the check covers everything else. Without AVX512-BF16 or AMX (AVX2-only
CPUs) oneDNN has no bf16 GEMM and the bf16 weight grads widen to OpenBLAS fp32 GEMMs, so there the
bf16 runs pin OpenBLAS to one thread too. Exits 77 (skipped) on a machine with a
single CPU.
"""

import json
import os
import subprocess
import sys


def native_bf16():
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def losses(binary, model, recipe, compute, cpus):
    cmd = [binary, "--recipe", recipe, "--model", model, "--tokens", "random:3", "--batch", "2",
           "--seq", "64", "--warmup", "0", "--steps", "4", "--compute", compute]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    if compute == "fp32" or not native_bf16():
        env["OPENBLAS_NUM_THREADS"] = "1"
    p = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr[-2000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return r["losses"], r["threads"]


def main():
    binary, model = sys.argv[1], sys.argv[2]
    recipe = sys.argv[3] if len(sys.argv) > 3 else "tiny-debug"
    every = sorted(os.sched_getaffinity(0))
    if len(every) < 2:
        print("one CPU: nothing to compare")
        return 77
    failed = False
    for compute in ("fp32", "bf16"):
        one, t1 = losses(binary, model, recipe, compute, {every[0]})
        all_, tn = losses(binary, model, recipe, compute, set(every))
        same = [a.hex() for a in one] == [b.hex() for b in all_]
        print(f"{compute}: {t1} thread(s) {[a.hex() for a in one]}")
        print(f"{compute}: {tn} threads  {[b.hex() for b in all_]}  {'same' if same else 'DIFFER'}")
        failed |= not same
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
