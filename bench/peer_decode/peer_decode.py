#!/usr/bin/env python3
"""CPU decode throughput: ramstream `generate` against Hugging Face transformers `generate` on the
same model (SmolLM2-135M-Instruct: the default GGUF converted once to a Hugging Face folder, which
both sides load), the same prompts, greedy, a fixed number of new tokens, the same CPUs and
thread count, each run in its own process.

    python3 bench/peer_decode/peer_decode.py [--build-dir build] [--batches 1,8,32]
        [--contexts 128,512] [--new-tokens 32] [--caches bf16,kivi4,kivi2,h2o] [--quick]
        [--llama-bench PATH/TO/llama-bench]

Prompts are paragraphs of the Debian handbook (bench/kv_quality/prose.py) cut to the context's
token count, different per row. Decode tokens/s: ours from `generate --json` (tokens produced by
decode steps over their time); the peer's as B x (N - 1) / (time of generate(N) - time of
generate(1)), the first token being the prefill's. Prints a table with ratios ours/peer; the last
stdout line is one JSON object (cpu, threads, rows, ratio_batch1, ratio_batch32).

With --llama-bench (llama.cpp's benchmark, built from its public source outside this repository;
never committed), batch 1 gets a row for llama.cpp on the same weights as an f32 GGUF (written
once by `ramstream convert --type f32` from the same folder): `llama-bench -p 0 -n N -d CONTEXT`
(N tokens generated after a CONTEXT-token cache) with the same threads and CPUs, and the JSON
gains ratio_vs_llama_batch1 (ours bf16 / llama.cpp, lowest over the contexts).
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "bench", "peer_cpu_train"))
sys.path.insert(0, os.path.join(ROOT, "bench", "kv_quality"))
import peer_cpu_train as common  # noqa: E402  (venv, model folder, CPU name)
import prose  # noqa: E402


def clean_env(threads):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OMP_") and k != "OPENBLAS_NUM_THREADS"}
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def write_prompts(py, model, batch, context, path):
    """`batch` different runs of handbook paragraphs, each exactly `context` tokens."""
    subprocess.run([py, os.path.join(HERE, "hf_generate.py"), "prompts", "--model", model,
                    "--text", prose.ensure_prose(), "--tokens", str(context), "--count",
                    str(batch), "--out", path], check=True, stdout=subprocess.DEVNULL)


def run_json(cmd, env, cpus):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-3000:])
        raise SystemExit(f"peer_decode: {' '.join(cmd[:3])} ... exited {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def llama_row(binary, gguf, context, new_tokens, threads, cpus):
    r = run_json_array([binary, "-m", gguf, "-p", "0", "-n", str(new_tokens), "-d", str(context),
                        "-t", str(threads), "-r", "3", "-o", "json"], cpus)
    return r[0]["avg_ts"]


def run_json_array(cmd, cpus):
    p = subprocess.run(cmd, capture_output=True, text=True,
                       preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-3000:])
        raise SystemExit(f"peer_decode: {cmd[0]} exited {p.returncode}")
    return json.loads(p.stdout)


def ensure_f32_gguf(rs, model):
    path = os.path.join(common.cache_dir(), "peer", "smollm2-135m-instruct-f32.gguf")
    if not os.path.exists(path):
        subprocess.run([rs, "convert", "--from", model, "--to", path, "--type", "f32"], check=True,
                       stdout=subprocess.DEVNULL)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--contexts", default="128,512")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--caches", default="bf16,kivi4,kivi2,h2o")
    ap.add_argument("--quick", action="store_true", help="batch 1 and 8, context 128, 16 tokens")
    ap.add_argument("--llama-bench", help="llama.cpp's llama-bench: adds its batch-1 rows")
    a = ap.parse_args()
    if a.quick:
        a.batches, a.contexts, a.new_tokens = "1,8", "128", 16
    cpus = sorted(os.sched_getaffinity(0))
    threads = len(cpus)
    py = common.ensure_peer_venv()
    model = common.ensure_model(a.build_dir)
    rs = os.path.join(a.build_dir, "bin", "ramstream")
    cache = os.path.join(common.cache_dir(), "peer", "decode")
    os.makedirs(cache, exist_ok=True)
    print(f"cpu: {common.cpu_description()}; threads {threads}; model {model}")
    print(f"{'ctx':>5} {'batch':>5} {'system':<16} {'decode tok/s':>12} {'vs peer':>8}")
    rows = []
    for context in [int(c) for c in a.contexts.split(",")]:
        for batch in [int(b) for b in a.batches.split(",")]:
            prompts = os.path.join(cache, f"handbook-{context}x{batch}.jsonl")
            if not os.path.exists(prompts):
                write_prompts(py, model, batch, context, prompts)
            peer = run_json([py, os.path.join(HERE, "hf_generate.py"), "bench", "--model", model,
                             "--prompts", prompts, "--new-tokens", str(a.new_tokens),
                             "--threads", str(threads)], clean_env(threads), cpus)
            rows.append({"context": context, "batch": batch, "system": "transformers",
                         "decode_tokens_per_s": peer["decode_tokens_per_s"],
                         "prompt_tokens": peer["prompt_tokens"]})
            print(f"{context:>5} {batch:>5} {'transformers':<16} "
                  f"{peer['decode_tokens_per_s']:>12.1f} {'':>8}", flush=True)
            for kv in a.caches.split(","):
                ours = run_json([rs, "generate", "--model", model, "--batch-file", prompts,
                                 "--raw", "--ignore-eos", "--max-new-tokens", str(a.new_tokens),
                                 "--batch-size", str(batch), "--kv-cache", kv,
                                 "--kv-residual", "32", "--kv-budget", "0.5",
                                 "--output", os.devnull, "--json"], clean_env(threads), cpus)
                ratio = ours["decode_tokens_per_s"] / peer["decode_tokens_per_s"]
                rows.append({"context": context, "batch": batch, "system": f"ramstream {kv}",
                             "decode_tokens_per_s": ours["decode_tokens_per_s"],
                             "prompt_tokens": ours["prompt_tokens"],
                             "kv_bytes_per_token": ours["kv_bytes_per_token"], "ratio": ratio})
                print(f"{context:>5} {batch:>5} {'ramstream ' + kv:<16} "
                      f"{ours['decode_tokens_per_s']:>12.1f} {ratio:>7.2f}x", flush=True)
            if a.llama_bench and batch == 1:
                ts = llama_row(a.llama_bench, ensure_f32_gguf(rs, model), context, a.new_tokens,
                               threads, cpus)
                rows.append({"context": context, "batch": 1, "system": "llama.cpp f32",
                             "decode_tokens_per_s": ts,
                             "ratio": ts / peer["decode_tokens_per_s"]})
                print(f"{context:>5} {batch:>5} {'llama.cpp f32':<16} {ts:>12.1f} "
                      f"{ts / peer['decode_tokens_per_s']:>7.2f}x", flush=True)

    def ratio_at(batch):
        r = [x["ratio"] for x in rows if x["batch"] == batch and x["system"] == "ramstream bf16"]
        return min(r) if r else None

    def vs_llama():
        out = []
        for x in rows:
            if x["system"] != "llama.cpp f32":
                continue
            ours = [y["decode_tokens_per_s"] for y in rows if y["batch"] == 1 and
                    y["context"] == x["context"] and y["system"] == "ramstream bf16"]
            out += [o / x["decode_tokens_per_s"] for o in ours]
        return min(out) if out else None

    print(json.dumps({"cpu": common.cpu_description(), "threads": threads,
                      "new_tokens": a.new_tokens, "rows": rows, "ratio_batch1": ratio_at(1),
                      "ratio_batch8": ratio_at(8), "ratio_batch32": ratio_at(32),
                      "ratio_vs_llama_batch1": vs_llama()}))


if __name__ == "__main__":
    main()
