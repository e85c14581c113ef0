"""The peer's side of bench/peer_decode: Hugging Face transformers `generate` on the CPU, and the
prompt maker both sides share. Runs inside the peer virtual environment (torch + transformers).

    python hf_generate.py prompts --model DIR --text PROSE.txt --tokens 128 --count 8 \
        --out prompts.jsonl [--same]
    python hf_generate.py bench --model DIR --prompts prompts.jsonl --new-tokens 32 --threads 2 \
        [--repeat 1] [--device cpu|cuda] [--gpu-memory-mib M]

`prompts` writes --count lines {"id": i, "prompt": TEXT} where each TEXT is exactly --tokens
tokens under the model's tokenizer (no special tokens added, as `ramstream generate --raw`
encodes): a run of consecutive paragraphs of the prose file starting at a paragraph boundary,
cut at a token boundary, decoded, and kept only where re-encoding gives the same ids (a cut that
re-tokenises differently is skipped for the next start). Different lines are different,
non-overlapping text (--same: --count copies of the first).

`bench` loads the model in fp32 (the weights are the converted folder's bf16 values, exact in
fp32), left-pads the batch (all prompts have equal length, so no padding is actually needed; the
attention mask is passed anyway) and times greedy `generate` (do_sample=False, the default
dynamic KV cache) after one untimed warm-up:
    t_prefill  generate(max_new_tokens=1): the prompt's forward pass and the first token;
    t_total    generate(max_new_tokens=N, min_new_tokens=N): prefill plus N-1 decode steps;
    decode_tokens_per_s = B * (N - 1) / (t_total - t_prefill)
(the same count ramstream's decode_tokens_per_s uses: new tokens less the one per row that the
prefill's logits give). Each is the median of --repeat runs. As a cross-check it also stamps the
time of the first and last call of a logits processor inside the timed full run:
decode_tokens_per_s_stamped = B * (N - 1) / (last - first), free of the prefill's run-to-run
noise. The last stdout line is one JSON object.

`--device cuda` runs the model in bf16 on the GPU; with `--gpu-memory-mib M` it is loaded the way
accelerate offloads a model larger than the GPU: `device_map="auto"` with `max_memory={0: M MiB,
"cpu": ...}`, so the layers that do not fit stay in host memory and accelerate's hooks move
their weights to the GPU for every forward (bench/peer_decode/offload_decode.py).
"""

import argparse
import json
import statistics
import sys
import time


def make_prompts(a):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(a.model)
    paragraphs = [p for p in open(a.text, encoding="utf-8").read().split("\n\n") if p.strip()]
    # Token ids of each paragraph, with the blank-line separator the file has between them.
    out, start, tries = [], 0, 0
    while len(out) < (1 if a.same else a.count):
        if start >= len(paragraphs):
            raise SystemExit(f"hf_generate: {a.text}: not enough text for {a.count} prompts of "
                             f"{a.tokens} tokens")
        ids, end = [], start
        while len(ids) < a.tokens and end < len(paragraphs):
            text = "\n\n".join(paragraphs[start:end + 1])
            ids = tok(text, add_special_tokens=False)["input_ids"]
            end += 1
        if len(ids) < a.tokens:
            start = len(paragraphs)
            continue
        cut = ids[:a.tokens]
        text = tok.decode(cut)
        tries += 1
        if tok(text, add_special_tokens=False)["input_ids"] == cut:
            out.append(text)
            start = end  # the next prompt starts after the paragraphs this one touched
        else:
            start += 1
    if a.same:
        out = out * a.count
    with open(a.out, "w", encoding="utf-8") as f:
        for i, text in enumerate(out):
            f.write(json.dumps({"id": i, "prompt": text}) + "\n")
    print(json.dumps({"prompts": len(out), "tokens": a.tokens, "tries": tries}))


def bench(a):
    import torch
    import transformers

    torch.set_num_threads(a.threads)
    prompts = [json.loads(line)["prompt"] for line in open(a.prompts, encoding="utf-8")
               if line.strip()]
    tok = transformers.AutoTokenizer.from_pretrained(a.model)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    lengths = enc["attention_mask"].sum(dim=1).tolist()
    cuda = a.device == "cuda"
    if not cuda:
        model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    elif a.gpu_memory_mib > 0:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            a.model, dtype=torch.bfloat16, device_map="auto",
            max_memory={0: f"{a.gpu_memory_mib}MiB", "cpu": "200GiB"})
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            a.model, dtype=torch.bfloat16).to("cuda")
    model.eval()
    if cuda:
        enc = {k: v.to("cuda") for k, v in enc.items()}
    placement = sorted(set(str(d) for d in getattr(model, "hf_device_map", {}).values()))
    B, N = len(prompts), a.new_tokens

    class Stamp(transformers.LogitsProcessor):
        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            return scores

    def gen(n, stamp=None):
        kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False,
                  pad_token_id=tok.pad_token_id, attention_mask=enc["attention_mask"])
        if stamp is not None:
            kw["logits_processor"] = transformers.LogitsProcessorList([stamp])
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(enc["input_ids"], **kw)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    gen(min(N, 4))  # warm-up: first-call allocations and kernel selection
    prefill, total, stamped = [], [], []
    out = None
    for _ in range(a.repeat):
        prefill.append(gen(1)[0])
        stamp = Stamp()
        t, out = gen(N, stamp)
        total.append(t)
        if len(stamp.times) >= 2:
            stamped.append(B * (len(stamp.times) - 1) / (stamp.times[-1] - stamp.times[0]))
    t_prefill, t_total = statistics.median(prefill), statistics.median(total)
    new = out[:, enc["input_ids"].shape[1]:]
    texts = [tok.decode(row, skip_special_tokens=True) for row in new]
    print(json.dumps({
        "batch": B, "prompt_tokens": lengths, "new_tokens": int(new.shape[1]),
        "prefill_s": t_prefill, "total_s": t_total,
        "prefill_runs_s": prefill, "total_runs_s": total,
        "decode_s": t_total - t_prefill,
        "decode_tokens_per_s": B * (N - 1) / (t_total - t_prefill) if t_total > t_prefill
        else float("nan"),
        "decode_tokens_per_s_stamped": statistics.median(stamped) if stamped else float("nan"),
        "prefill_tokens_per_s": sum(lengths) / t_prefill,
        "threads": torch.get_num_threads(),
        "attn_implementation": getattr(model.config, "_attn_implementation", "?"),
        "cache": "DynamicCache (generate's default)",
        "device": a.device, "gpu_memory_mib": a.gpu_memory_mib, "placement": placement,
        "texts": texts,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("prompts")
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--same", action="store_true")
    b = sub.add_parser("bench")
    b.add_argument("--model", required=True)
    b.add_argument("--prompts", required=True)
    b.add_argument("--new-tokens", type=int, default=32)
    b.add_argument("--threads", type=int, required=True)
    b.add_argument("--repeat", type=int, default=1)
    b.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    b.add_argument("--gpu-memory-mib", type=int, default=0,
                   help="cuda: accelerate offload with this much GPU memory (0: all on the GPU)")
    a = ap.parse_args()
    if a.mode == "prompts":
        make_prompts(a)
    else:
        if a.new_tokens < 2:
            sys.exit("hf_generate: --new-tokens must be >= 2 (decode needs steps after prefill)")
        bench(a)


if __name__ == "__main__":
    main()
