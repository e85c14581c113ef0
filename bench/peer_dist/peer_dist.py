#!/usr/bin/env python3
"""Data parallel on the CPU: `ramstream launch` against PyTorch DDP (Gloo) + transformers.

    python3 bench/peer_dist/peer_dist.py [--build-dir build] [--nprocs 1,2] [--steps 5]

The same model (SmolLM2-135M-Instruct, the default GGUF converted once to a Hugging Face folder
that both sides load), fp32, AdamW, clipping 1.0, one global batch of 4 rows x 256 tokens split
over N processes (4/N rows each, one row per micro-batch), each process on its share of the CPUs.
Ours: `ramstream launch --nproc N -- run smollm2-135m-full-sft` (activations kept, the
recipe's default), its per-step times from metrics.jsonl and the launcher's peak RSS per rank.
Peer: ddp_step.py. Both sides are run one after the other, alone. The median step time excludes
each side's first step. Prints a table, then one JSON object: per N our and the peer's step ms,
peak RSS per rank, and the ratios (peer ms / our ms; our 1-process ms / N-process ms).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "bench", "peer_cpu_train"))
import peer_cpu_train as common  # noqa: E402  (venv, model folder, tokens, CPU description)


def ours(build, model, n, steps):
    out = tempfile.mkdtemp(prefix="ramstream-peer-dist-")
    args = ["run", "smollm2-135m-full-sft", f"model.path={model}", f"output_dir={out}",
            "checkpoint.resume=never", "model.compute=fp32", "train.batch_size=1",
            f"train.grad_accum={4 // n}", f"train.max_steps={steps}", "eval.before=false",
            "eval.at_end=false", "checkpoint.at_end=false", "log.every=1", "log.progress=lines"]
    binary = os.path.join(build, "bin", "ramstream")
    cmd = [binary] + (["launch", "--nproc", str(n), "--"] if n > 1 else []) + args
    if n == 1:
        cmd = ["/usr/bin/time", "-f", "peak_rss_kib %M"] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-3000:])
        raise SystemExit(f"peer_dist: ours on {n} processes exited {p.returncode}")
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"loss"' in l]
    if n == 1:
        rss = [int(re.search(r"peak_rss_kib (\d+)", p.stderr).group(1)) / 1024.0]
    else:
        line = re.search(r"peak RSS per rank \(GiB\): (.*)", p.stderr).group(1)
        rss = [float(x.split()[1]) * 1024.0 for x in line.split(",")]
    shutil.rmtree(out, ignore_errors=True)
    return [r["ms"] for r in rows], rss


def peer(py, model, tokens, n, steps):
    p = subprocess.run([py, os.path.join(HERE, "ddp_step.py"), "--model", model, "--tokens", tokens,
                        "--nproc", str(n), "--micro", str(4 // n), "--seq", "256",
                        "--steps", str(steps)], capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-3000:])
        raise SystemExit(f"peer_dist: the peer on {n} processes exited {p.returncode}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return r["step_ms"], r["peak_rss_mib"], r["versions"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    ap.add_argument("--nprocs", default="1,2")
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    py = common.ensure_peer_venv()
    model = common.ensure_model(a.build_dir)
    tokens = common.ensure_tokens(py, model, 4, 256)
    print(f"CPU: {common.cpu_description()}")
    print(f"{'N':>3} {'ours ms':>9} {'peer ms':>9} {'peer/ours':>9} {'our RSS MiB/rank':>17} "
          f"{'peer RSS MiB/rank':>18}")
    result = {"cpu": common.cpu_description(), "runs": {}}
    for n in [int(x) for x in a.nprocs.split(",")]:
        o_ms, o_rss = ours(a.build_dir, model, n, a.steps)
        p_ms, p_rss, versions = peer(py, model, tokens, n, a.steps)
        om, pm = statistics.median(o_ms[1:]), statistics.median(p_ms[1:])
        result["runs"][n] = {"ours_ms": om, "peer_ms": pm, "ratio": pm / om,
                             "ours_rss_mib": o_rss, "peer_rss_mib": p_rss}
        result["versions"] = versions
        print(f"{n:3d} {om:9.0f} {pm:9.0f} {pm / om:9.2f} {max(o_rss):17.0f} {max(p_rss):18.0f}",
              flush=True)
    runs = result["runs"]
    if 1 in runs:
        for n, r in runs.items():
            r["ours_speedup"] = runs[1]["ours_ms"] / r["ours_ms"]
            r["peer_speedup"] = runs[1]["peer_ms"] / r["peer_ms"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
