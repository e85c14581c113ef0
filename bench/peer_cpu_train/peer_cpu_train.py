#!/usr/bin/env python3
"""CPU training throughput and memory: ramstream against Hugging Face transformers + PyTorch 2.x.

    python3 bench/peer_cpu_train/peer_cpu_train.py [--build-dir build] [--threads N]
        [--batch 2] [--seq 256] [--warmup 2] [--steps 6] [--only ours|peer] [--json]

The same model (SmolLM2-135M-Instruct, the default recipe's GGUF converted once to a Hugging Face
folder by `ramstream convert`, so both sides load identical weights), the same token batch (the
bundled training data tokenized by the model's tokenizer), the same thread count, AdamW
(lr 1e-4, no weight decay), global-norm clipping 1.0, fp32 master weights; each configuration in
its own process, so its peak RSS (VmHWM) is its own:

    ours   fp32 / bf16 compute (model.compute), activations kept / recomputed   (peer_train_step)
    peer   fp32 / bf16 autocast, without / with gradient checkpointing          (hf_step.py)

On first use it creates the peer's virtual environment at
${RAMSTREAM_CACHE:-~/.cache/ramstream}/peer-venv with pinned versions from PyPI (several GB: the
PyPI torch wheel brings CUDA libraries; nothing of it is used by ramstream's build or tests).
It prints a table and, last, one JSON object: fp32_ratio (ours fp32 kept / peer fp32), best_ratio
(our best with kept activations / the peer's best without checkpointing), recompute_ratio (our
best recompute / the peer's best with checkpointing), rss_ratio (peak RSS of our fastest kept
configuration / the peer's fastest; fp32_rss_ratio: fp32 against fp32), gemm_bound_fraction (ours with model.compute auto: tokens/s over the GEMM bound, the rate at
which 6 x matmul weights x tokens would take as long as the probed GEMM rate), cpu, runs.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PEER_PINS = ["torch==2.15.0", "transformers==5.24.0", "numpy", "safetensors"]


def log(msg):
    print(f"peer_cpu_train: {msg}", file=sys.stderr, flush=True)


def cache_dir():
    return os.environ.get("RAMSTREAM_CACHE", os.path.expanduser("~/.cache/ramstream"))


def cpu_description():
    name, flags = "unknown CPU", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{name}, {len(os.sched_getaffinity(0))} CPUs, " + " ".join(isa)


def ensure_peer_venv():
    venv = os.path.join(cache_dir(), "peer-venv")
    py = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, "ramstream-pins.txt")
    want = "\n".join(PEER_PINS)
    if os.path.exists(py) and os.path.exists(stamp) and open(stamp).read() == want:
        return py
    log(f"installing the peer ({', '.join(PEER_PINS)}) into {venv} (first use; several GB)")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([py, "-m", "pip", "install", "--quiet"] + PEER_PINS, check=True)
    with open(stamp, "w") as f:
        f.write(want)
    return py


def ensure_model(build_dir):
    folder = os.path.join(cache_dir(), "peer", "smollm2-135m-instruct")
    if os.path.exists(os.path.join(folder, "ramstream_output.json")):
        return folder
    gguf = subprocess.run(["bash", os.path.join(ROOT, "scripts", "fetch_default_model.sh")],
                          check=True, capture_output=True, text=True).stdout.strip()
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    subprocess.run([os.path.join(build_dir, "bin", "ramstream"), "convert", "--from", gguf,
                    "--to", folder, "--force"], check=True)
    return folder


def ensure_tokens(py, model, batch, seq):
    """batch x seq int64 ids: the bundled training conversations, tokenized and concatenated."""
    path = os.path.join(cache_dir(), "peer", f"tokens-{batch}x{seq}.bin")
    if os.path.exists(path) and os.path.getsize(path) == 8 * batch * seq:
        return path
    code = r"""
import json, sys, numpy as np, transformers
tok = transformers.AutoTokenizer.from_pretrained(sys.argv[1])
need, ids = int(sys.argv[3]), []
for line in open(sys.argv[2]):
    for m in json.loads(line)["messages"]:
        ids += tok(m["content"] + "\n")["input_ids"]
    if len(ids) >= need:
        break
assert len(ids) >= need, "not enough bundled text"
np.asarray(ids[:need], dtype="<i8").tofile(sys.argv[4])
"""
    subprocess.run([py, "-c", code, model, os.path.join(ROOT, "data", "bundled",
                    "tasks_train.jsonl"), str(batch * seq), path], check=True)
    return path


def run_json(cmd, env):
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-3000:])
        raise SystemExit(f"peer_cpu_train: {' '.join(cmd[:3])} ... exited {p.returncode}")
    last = p.stdout.strip().splitlines()[-1]
    r = json.loads(last)
    r["wall_s"] = time.time() - t0
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--only", choices=["ours", "peer"])
    ap.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    a = ap.parse_args()

    py = ensure_peer_venv()
    model = ensure_model(a.build_dir)
    tokens = ensure_tokens(py, model, a.batch, a.seq)
    # Both sides run on the same CPUs: the first --threads of this process's affinity mask.
    # torch gets set_num_threads(threads); ramstream takes its thread count from the mask.
    cpus = sorted(os.sched_getaffinity(0))[:a.threads]
    if len(cpus) < a.threads:
        raise SystemExit(f"peer_cpu_train: --threads {a.threads} but only {len(cpus)} CPUs allowed")
    os.sched_setaffinity(0, cpus)
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.pop(var, None)  # each side's own defaults, as a user would run it
    common = ["--model", model, "--tokens", tokens, "--batch", str(a.batch), "--seq", str(a.seq),
              "--warmup", str(a.warmup), "--steps", str(a.steps)]
    step_bin = os.path.join(a.build_dir, "bin", "peer_train_step")

    runs = {}
    if a.only != "peer":
        for compute in ("fp32", "bf16", "auto"):
            for act in ("keep", "recompute"):
                if compute == "auto" and act == "recompute":
                    continue
                name = f"ours {compute} {act}"
                log(f"running {name}")
                runs[name] = run_json([step_bin] + common + ["--compute", compute,
                                                             "--activations", act], env)
        if "OPENBLAS_CORETYPE" in env:
            # Some images pin OpenBLAS's kernels (these VMs: Haswell, no AVX-512); the ratios use
            # the environment as it is, this row shows what the pin costs the fp32 step.
            name = f"ours fp32 keep, OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']} unset"
            log(f"running {name}")
            unpinned = {k: v for k, v in env.items() if k != "OPENBLAS_CORETYPE"}
            runs[name] = run_json([step_bin] + common + ["--compute", "fp32"], unpinned)
    if a.only != "ours":
        for bf16 in (False, True):
            for gc in (False, True):
                name = f"peer {'bf16' if bf16 else 'fp32'} {'checkpointing' if gc else 'keep'}"
                log(f"running {name}")
                cmd = [py, os.path.join(HERE, "hf_step.py")] + common + ["--threads",
                                                                         str(a.threads)]
                runs[name] = run_json(cmd + (["--bf16"] if bf16 else []) +
                                      (["--checkpointing"] if gc else []), env)

    cpu = cpu_description()
    print(f"CPU: {cpu}; {a.threads} threads; batch {a.batch} x {a.seq} tokens; "
          f"{a.steps} timed steps after {a.warmup}")
    width = max(len(name) for name in runs) if runs else 4
    print(f"{'run':<{width}} {'tokens/s':>9} {'peak RSS MiB':>13} {'first loss':>11}  step ms")
    for name, r in runs.items():
        ms = " ".join(f"{x:.0f}" for x in r["step_ms"][a.warmup:])
        print(f"{name:<{width}} {r['tokens_per_s']:9.1f} {r['peak_rss_mib']:13.0f} "
              f"{r['losses'][0]:11.4f}  {ms}")

    def tps(name):
        return runs[name]["tokens_per_s"] if name in runs else float("nan")

    out = {"cpu": cpu, "threads": a.threads, "batch": a.batch, "seq": a.seq, "runs": runs}
    if a.only is None:
        ours_keep = max(tps("ours fp32 keep"), tps("ours bf16 keep"), tps("ours auto keep"))
        ours_rec = max(tps("ours fp32 recompute"), tps("ours bf16 recompute"))
        peer_keep = max(tps("peer fp32 keep"), tps("peer bf16 keep"))
        peer_gc = max(tps("peer fp32 checkpointing"), tps("peer bf16 checkpointing"))
        out["fp32_ratio"] = tps("ours fp32 keep") / tps("peer fp32 keep")
        out["best_ratio"] = ours_keep / peer_keep
        out["recompute_ratio"] = ours_rec / peer_gc
        def best(names):
            return max(names, key=tps)
        ours_best = best(["ours fp32 keep", "ours bf16 keep", "ours auto keep"])
        peer_best = best(["peer fp32 keep", "peer bf16 keep"])
        # Peak RSS of the fastest configuration of each side, and fp32 against fp32.
        out["rss_ratio"] = runs[ours_best]["peak_rss_mib"] / runs[peer_best]["peak_rss_mib"]
        out["rss_ratio_configs"] = [ours_best, peer_best]
        out["fp32_rss_ratio"] = (runs["ours fp32 keep"]["peak_rss_mib"] /
                                 runs["peer fp32 keep"]["peak_rss_mib"])
        out["peer_versions"] = runs["peer fp32 keep"]["versions"]
    if "ours auto keep" in runs:
        auto = runs["ours auto keep"]
        if "gemm_flops_per_s" in auto:
            bound = auto["gemm_flops_per_s"] / (6.0 * auto["matmul_params"])
            out["auto_compute"] = auto["compute"]
            out["gemm_bound_tokens_per_s"] = bound
            out["gemm_bound_fraction"] = auto["tokens_per_s"] / bound
    for k in ("fp32_ratio", "best_ratio", "recompute_ratio", "rss_ratio", "fp32_rss_ratio",
              "gemm_bound_fraction"):
        if k in out:
            print(f"{k:<20} {out[k]:.3f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
