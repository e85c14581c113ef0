"""The peer's side of bench/peer_cpu_train: what a user runs instead of ramstream on a CPU.

Hugging Face transformers + PyTorch 2.x from PyPI: AutoModelForCausalLM in fp32, torch.optim.AdamW
(PyTorch's default implementation), clip_grad_norm_, optionally bf16 autocast and gradient
checkpointing, on the same token batch as ramstream's side (peer_train_step).

    python hf_step.py --model DIR --tokens FILE --batch 2 --seq 256 --threads 2 \
        [--bf16] [--checkpointing] [--warmup 2] [--steps 6] [--lr 1e-4]

The last stdout line is one JSON object: tokens_per_s, step_ms, losses, peak_rss_mib (VmHWM of
this process), versions.
"""

import argparse
import json
import time


def vm_hwm_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return -1.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    a = ap.parse_args()

    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ids = np.fromfile(a.tokens, dtype="<i8", count=a.batch * a.seq)
    if ids.size != a.batch * a.seq:
        raise SystemExit(f"hf_step: {a.tokens}: expected {a.batch * a.seq} int64 token ids")
    ids = torch.from_numpy(ids.reshape(a.batch, a.seq).copy())

    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.config.use_cache = False
    if a.checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    step_ms, losses = [], []
    t_begin = 0.0
    for s in range(a.warmup + a.steps):
        if s == a.warmup:
            t_begin = time.perf_counter()
        t0 = time.perf_counter()
        losses.append(step())
        step_ms.append(1e3 * (time.perf_counter() - t0))
    elapsed = time.perf_counter() - t_begin
    print(json.dumps({
        "tokens_per_s": a.batch * a.seq * a.steps / elapsed,
        "step_ms": step_ms,
        "losses": losses,
        "peak_rss_mib": vm_hwm_mib(),
        "threads": torch.get_num_threads(),
        "attn_implementation": getattr(model.config, "_attn_implementation", "?"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }))


if __name__ == "__main__":
    main()
