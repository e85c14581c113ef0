#!/usr/bin/env python3
"""GPU decode of a model that does not fit a set device budget: ramstream `generate` streaming its
layers through the device slots, against transformers + accelerate offload (`device_map="auto"`
with the same GPU memory cap) on the same model, prompts and GPU, in one run; plus the PCIe bound
and our fraction of it.

    python3 bench/peer_decode/offload_decode.py --model GGUF [--build-dir build-gpu]
        [--budget-mib 64] [--batches 1,8,32] [--context 256] [--new-tokens 32] [--python python3]

Runs on the GPU machine (scripts/gpu_check.sh step (g)); needs torch with CUDA, transformers and
accelerate in --python. The model: the GGUF, converted once to a Hugging Face folder by
`ramstream convert` for the peer (both sides then hold the same bf16 values). Prompts: the bundled
training conversations (data/bundled/tasks_train.jsonl) as text, cut to --context tokens, a
different one per row (hf_generate.py prompts). Both sides are held to --budget-mib of device
memory for the weights: ours `--weights-device-memory` (the first layers that fit next to the two
streaming slots stay resident, the rest stream every step), the peer's accelerate
`max_memory={0: budget}` (layers that do not fit are offloaded to host memory and copied in by
accelerate's hooks at every forward).

PCIe bound: a decode step must copy the streamed weights (ours reports the bytes per step,
`decode_weight_bytes_per_step`) at the measured pinned host-to-device bandwidth (torch, 256 MiB,
best of 5), so at most batch x bandwidth / bytes tokens/s. Prints a table; the last stdout line
is one JSON object (gpu, bandwidth, rows with ratio vs accelerate and fraction of the bound).
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def cache_dir():
    return os.environ.get("RAMSTREAM_CACHE", os.path.expanduser("~/.cache/ramstream"))


def run_json(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-3000:])
        raise SystemExit(f"offload_decode: {' '.join(cmd[:3])} ... exited {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


PROBE = r"""
import json, time, torch, transformers
try:
    import accelerate
    acc = accelerate.__version__
except ImportError:
    acc = None
x = torch.empty(256 << 20, dtype=torch.uint8).pin_memory()
y = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
best = 0.0
for _ in range(6):
    torch.cuda.synchronize(); t = time.perf_counter()
    y.copy_(x, non_blocking=True); torch.cuda.synchronize()
    best = max(best, x.numel() / (time.perf_counter() - t))
print(json.dumps({"gpu": torch.cuda.get_device_name(0), "h2d_bytes_per_s": best,
                  "torch": torch.__version__, "transformers": transformers.__version__,
                  "accelerate": acc}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="the GGUF both sides run")
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build-gpu"))
    ap.add_argument("--budget-mib", type=int, default=64)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu: a smoke test of this script (nothing streams, no bound)")
    a = ap.parse_args()
    rs = os.path.join(a.build_dir, "bin", "ramstream")
    work = os.path.join(cache_dir(), "peer", "offload")
    os.makedirs(work, exist_ok=True)
    folder = os.path.join(work, "model")
    if not os.path.exists(os.path.join(folder, "ramstream_output.json")):
        subprocess.run([rs, "convert", "--from", a.model, "--to", folder, "--force"], check=True,
                       stdout=subprocess.DEVNULL)
    text = os.path.join(work, "conversations.txt")
    if not os.path.exists(text):
        with open(os.path.join(ROOT, "data", "bundled", "tasks_train.jsonl")) as f, \
                open(text, "w") as out:
            for line in f:
                msgs = json.loads(line)["messages"]
                out.write(" ".join(m["content"] for m in msgs) + "\n\n")
    if a.device == "cuda":
        probe = run_json([a.python, "-c", PROBE])
    else:
        probe = {"gpu": "none (cpu smoke test)", "h2d_bytes_per_s": float("nan"), "torch": "?",
                 "transformers": "?", "accelerate": "?"}
    bw = probe["h2d_bytes_per_s"]
    print(f"gpu: {probe['gpu']}; pinned H2D {bw / 1e9:.1f} GB/s; torch {probe['torch']}, "
          f"transformers {probe['transformers']}, accelerate {probe['accelerate']}; weight "
          f"budget {a.budget_mib} MiB")
    print(f"{'batch':>5} {'system':<22} {'decode tok/s':>12} {'vs accel.':>9} {'of bound':>8}")
    rows = []
    for batch in [int(b) for b in a.batches.split(",")]:
        prompts = os.path.join(work, f"prompts-{a.context}x{batch}.jsonl")
        if not os.path.exists(prompts):
            subprocess.run([a.python, os.path.join(HERE, "hf_generate.py"), "prompts", "--model",
                            folder, "--text", text, "--tokens", str(a.context), "--count",
                            str(batch), "--out", prompts], check=True, stdout=subprocess.DEVNULL)
        peer = run_json([a.python, os.path.join(HERE, "hf_generate.py"), "bench", "--model",
                         folder, "--prompts", prompts, "--new-tokens", str(a.new_tokens),
                         "--threads", str(os.cpu_count()), "--device", a.device,
                         "--gpu-memory-mib", str(a.budget_mib)])
        ours = run_json([rs, "generate", "--model", a.model, "--device", a.device, "--batch-file",
                         prompts, "--raw", "--ignore-eos", "--max-new-tokens", str(a.new_tokens),
                         "--batch-size", str(batch), "--weights-device-memory",
                         str(a.budget_mib / 1024), "--output", os.devnull, "--json"])
        per_step = ours["decode_weight_bytes_per_step"]
        bound = batch * bw / per_step if per_step > 0 else float("inf")
        ratio = ours["decode_tokens_per_s"] / peer["decode_tokens_per_s"]
        frac = ours["decode_tokens_per_s"] / bound
        rows.append({"batch": batch, "accelerate_tokens_per_s": peer["decode_tokens_per_s"],
                     "accelerate_placement": peer.get("placement"),
                     "ramstream_tokens_per_s": ours["decode_tokens_per_s"],
                     "streamed_bytes_per_step": per_step, "pcie_bound_tokens_per_s": bound,
                     "ratio_vs_accelerate": ratio, "fraction_of_bound": frac})
        print(f"{batch:>5} {'transformers+accelerate':<22} {peer['decode_tokens_per_s']:>12.1f}")
        print(f"{batch:>5} {'ramstream (streamed)':<22} {ours['decode_tokens_per_s']:>12.1f} "
              f"{ratio:>8.2f}x {100 * frac:>7.1f}%  ({per_step / 2**20:.1f} MiB/step, bound "
              f"{bound:.0f} tok/s)", flush=True)
    print(json.dumps({"gpu": probe["gpu"], "h2d_bytes_per_s": bw, "budget_mib": a.budget_mib,
                      "context": a.context, "new_tokens": a.new_tokens, "versions": probe,
                      "rows": rows}))


if __name__ == "__main__":
    main()
