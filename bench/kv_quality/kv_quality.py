#!/usr/bin/env python3
"""KV-cache quality and size: perplexity of SmolLM2-135M-Instruct on real English prose (the
Debian package debian-handbook, bench/kv_quality/prose.py) through the decode path, for each
cache back-end, at contexts 512 and 2048; then held-out exact match on the bundled tasks.

    python3 bench/kv_quality/kv_quality.py [--build-dir build] [--model GGUF|DIR]
        [--windows512 8] [--windows2048 2] [--tasks 200] [--only ppl|tasks] [--rows L1,L2] [--json]

`ramstream eval` prefills the first context/2 tokens of each window and feeds the other half one
token at a time through the cache, scoring each: the compressed cache predicts every scored token
(stricter than teacher-forced fake quantisation). Windows are consecutive (stride = context/2).
KV bytes per token are measured (the cache's bytes over the positions it covers, fp32 rows on
the CPU backend) and set against theory: per layer and KV head 2*D elements per token; KIVI codes
b + 32/G bits per element (fp16 scale and minimum per group of G; keys 24 N / G more with N
--kv-key-outliers), the full-precision window
(keys: the last n mod R tokens, values: the last R) at 32 bits, h2o: the budget's share of the
context (plus 13 bytes of score/position/flag per kept slot). Prints a table; the last stdout
line is one JSON object with every row.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import prose  # noqa: E402

# (label, --kv-cache, G, R, --kv-budget, --kv-sink, --kv-value-fit, --kv-key-outliers)
CACHES = [
    ("bf16", "bf16", 32, 128, 0.2, 0, "minmax", 0),
    ("kivi4", "kivi4", 32, 128, 0.2, 0, "minmax", 0),
    ("kivi2", "kivi2", 32, 128, 0.2, 0, "minmax", 0),
    ("kivi4 R32", "kivi4", 32, 32, 0.2, 0, "minmax", 0),
    ("kivi2 R32", "kivi2", 32, 32, 0.2, 0, "minmax", 0),
    ("kivi2 sink4", "kivi2", 32, 128, 0.2, 4, "minmax", 0),
    ("kivi2 sink32", "kivi2", 32, 128, 0.2, 32, "minmax", 0),
    ("kivi2 R32 sink4", "kivi2", 32, 32, 0.2, 4, "minmax", 0),
    ("kivi4 mse", "kivi4", 32, 128, 0.2, 0, "mse", 0),
    ("kivi2 mse", "kivi2", 32, 128, 0.2, 0, "mse", 0),
    ("kivi2 R32 mse", "kivi2", 32, 32, 0.2, 0, "mse", 0),
    ("kivi2 mse sink4", "kivi2", 32, 128, 0.2, 4, "mse", 0),
    ("kivi2 R32 mse sink4", "kivi2", 32, 32, 0.2, 4, "mse", 0),
    ("kivi2 outliers1", "kivi2", 32, 128, 0.2, 0, "minmax", 1),
    ("kivi2 mse sink4 outliers1", "kivi2", 32, 128, 0.2, 4, "mse", 1),
    ("kivi2 mse sink4 outliers2", "kivi2", 32, 128, 0.2, 4, "mse", 2),
    ("kivi2 R32 mse sink4 outliers2", "kivi2", 32, 32, 0.2, 4, "mse", 2),
    ("h2o 0.5", "h2o", 32, 128, 0.5, 0, "minmax", 0),
    ("h2o 0.2", "h2o", 32, 128, 0.2, 0, "minmax", 0),
    ("kivi2+h2o 0.2 R32", "kivi2+h2o", 32, 32, 0.2, 0, "minmax", 0),
    ("kivi2+h2o 0.2 R32 mse outliers2", "kivi2+h2o", 32, 32, 0.2, 0, "mse", 2),
]
# SmolLM2-135M: 30 layers, 3 KV heads, head dim 64.
LAYERS, NKV, D = 30, 3, 64


def theory_bytes_per_token(kind, G, R, budget, context, sink=0, outliers=0):
    """Average over the positions of a window's end state (n = context - 1 positions); KIVI
    sinks are `sink` full-precision rows of K and V before the quantised part; `outliers` per key
    channel and group cost 24 bits each (fp16 residual + slot byte)."""
    n = context - 1
    per_elem_tokens = 2 * LAYERS * NKV * D  # K and V elements per token
    if kind == "bf16":
        return per_elem_tokens * 4.0
    kept = n
    if "h2o" in kind:
        kept = max(8, int(-(-budget * context // 1)))
    if kind == "h2o":
        return (kept * (LAYERS * NKV * (2 * D * 4 + 13))) / n
    bits = 2 if "kivi2" in kind else 4
    code = bits + 32.0 / G
    kcode = code + 24.0 * outliers / G
    if "h2o" in kind:
        window = R + (kept - R) % G  # between R and R+G-1 rows of K and V
        quant = kept - window
        per_head = (quant * D * (code + kcode) / 8 + window * 2 * D * 4 + (quant + window) * 13)
        return LAYERS * NKV * per_head / n
    q = n - sink  # tokens after the sinks
    kwin, vwin = q % R, min(q, R)
    per_head = ((q - kwin) * kcode + (q - vwin) * code) * D / 8 + (kwin + vwin + 2 * sink) * D * 4
    return LAYERS * NKV * per_head / n


def run(cmd):
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-2000:])
        raise SystemExit(f"kv_quality: {' '.join(cmd[:4])} ... exited {p.returncode}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["wall_s"] = time.time() - t0
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    ap.add_argument("--model", default="")
    ap.add_argument("--windows512", type=int, default=8)
    ap.add_argument("--windows2048", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--only", choices=["ppl", "tasks"], default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rows", default="",
                    help="comma-separated labels of the perplexity rows to run (bf16, the "
                         "baseline, always runs); default all")
    a = ap.parse_args()
    model = a.model or subprocess.run(["bash", os.path.join(ROOT, "scripts",
                                       "fetch_default_model.sh")], check=True,
                                      capture_output=True, text=True).stdout.strip()
    rs = os.path.join(a.build_dir, "bin", "ramstream")
    rows = []
    wanted = {w.strip() for w in a.rows.split(",") if w.strip()}
    unknown = wanted - {c[0] for c in CACHES}
    if unknown:
        raise SystemExit(f"kv_quality: --rows: unknown {sorted(unknown)}; "
                         f"the rows are {[c[0] for c in CACHES]}")
    if a.only in (None, "ppl"):
        text = prose.ensure_prose()
        print(f"prose: {text} (Debian package debian-handbook {prose.package_version()})")
        print(f"{'context':>7} {'cache':<18} {'ppl':>9} {'vs bf16':>8} {'KV B/tok':>9} "
              f"{'theory':>9} {'tok/s':>7}")
        for context, windows in ((512, a.windows512), (2048, a.windows2048)):
            base = None
            for label, kind, G, R, budget, sink, fit, outliers in CACHES:
                if wanted and label not in wanted and kind != "bf16":
                    continue
                r = run([rs, "eval", "--model", model, "--data", text, "--context", str(context),
                         "--max-windows", str(windows), "--batch-size", str(windows),
                         "--kv-cache", kind, "--kv-group", str(G), "--kv-residual", str(R),
                         "--kv-budget", str(budget), "--kv-sink", str(sink),
                         "--kv-value-fit", fit, "--kv-key-outliers", str(outliers), "--json"])
                base = r["perplexity"] if kind == "bf16" else base
                th = theory_bytes_per_token(kind, G, R, budget, context, sink, outliers)
                row = {"context": context, "cache": label, "perplexity": r["perplexity"],
                       "delta_pct": 100 * (r["perplexity"] / base - 1), "tokens": r["tokens"],
                       "kv_bytes_per_token": r["kv_bytes_per_token"], "theory": th,
                       "tokens_per_s": r["tokens_per_s"]}
                rows.append(row)
                print(f"{context:>7} {label:<18} {row['perplexity']:>9.4f} "
                      f"{row['delta_pct']:>+7.2f}% {row['kv_bytes_per_token']:>9.0f} {th:>9.0f} "
                      f"{row['tokens_per_s']:>7.1f}", flush=True)
    if a.only in (None, "tasks"):
        tasks = os.path.join(ROOT, "data", "bundled", "tasks_eval.jsonl")
        print("exact match, data/bundled/tasks_eval.jsonl (prompts are ~40-60 tokens: with "
              "R=128 nothing is quantised, so R=32 is shown too)")
        for label, kind, G, R, budget, sink, fit, outliers in [
                ("bf16", "bf16", 32, 128, 0.5, 0, "minmax", 0),
                ("kivi4 R32", "kivi4", 32, 32, 0.5, 0, "minmax", 0),
                ("kivi2 R32", "kivi2", 32, 32, 0.5, 0, "minmax", 0),
                ("kivi2 R32 sink4", "kivi2", 32, 32, 0.5, 4, "minmax", 0),
                ("kivi2 R32 mse sink4", "kivi2", 32, 32, 0.5, 4, "mse", 0),
                ("kivi2 R32 mse sink4 outliers2", "kivi2", 32, 32, 0.5, 4, "mse", 2),
                ("h2o 0.5", "h2o", 32, 128, 0.5, 0, "minmax", 0),
                ("h2o 0.2", "h2o", 32, 128, 0.2, 0, "minmax", 0)]:
            r = run([rs, "eval", "--model", model, "--tasks", tasks, "--max-examples",
                     str(a.tasks), "--kv-cache", kind, "--kv-group", str(G), "--kv-residual",
                     str(R), "--kv-budget", str(budget), "--kv-sink", str(sink),
                     "--kv-value-fit", fit, "--kv-key-outliers", str(outliers), "--json"])
            rows.append({"tasks": r["examples"], "cache": label, "exact_match": r["exact_match"]})
            print(f"  {label:<10} {100 * r['exact_match']:5.1f}% of {r['examples']}", flush=True)
    print(json.dumps({"model": model, "rows": rows}))


if __name__ == "__main__":
    main()
