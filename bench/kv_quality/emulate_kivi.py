#!/usr/bin/env python3
"""KIVI variants in teacher-forced attention, laid out as `ramstream eval` runs them: to measure a
cache idea on SmolLM2-135M-Instruct before building it into the kernels.

    ~/.cache/ramstream/peer-venv/bin/python bench/kv_quality/emulate_kivi.py \\
        [--context 512] [--windows 8] [--keys post|pre|exact] [--values minmax|mse|exact] \\
        [--sink 0] [--group 32] [--residual 128] [--bits 2] [--model HF_DIR]

Windows as kv_quality.py's: window i covers tokens [i C/2, i C/2 + C) of the Debian handbook
prose (prose.py), its first half is the prompt, its second half is scored. The prompt's queries
attend exactly (the engine's prefill does); a scored query at position t sees the cache as the
engine holds it after appending t: the first `sink` tokens exact, keys [S, S + floor((t+1-S)/R) R)
quantised per channel in groups of G tokens (min/max), values [S, t+1-R) quantised per token in
groups of G channels (min/max, or the engine's --kv-value-fit mse: the best of min/max and 11
least-squares fits), the rest exact. fp16 rounding of scale and minimum is left out.
`--keys pre` quantises keys before RoPE (rotated back after dequantisation; KVQuant's choice),
which the engine does not do.

Checked against the engine (2026-12-03, `ramstream eval ... --json` on the same windows):
exact 20.8901 vs 20.8832, kivi2 23.7285 vs 23.7530 at 512. Needs transformers >= 5 (its
AttentionInterface); bench/peer_decode's venv has it. Prints one line with the perplexity.
"""

import argparse
import math
import os
import sys

import torch
import transformers
from transformers import AttentionInterface

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import prose  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--model", default=os.path.expanduser(
    "~/.cache/ramstream/peer/smollm2-135m-instruct"))
ap.add_argument("--context", type=int, default=512)
ap.add_argument("--windows", type=int, default=8)
ap.add_argument("--keys", choices=["post", "pre", "exact"], default="post")
ap.add_argument("--values", choices=["minmax", "mse", "exact"], default="minmax")
ap.add_argument("--sink", type=int, default=0)
ap.add_argument("--key-outliers", type=int, default=0,
                help="per key group, this many values farthest from the group's mean stay exact "
                     "and out of its range (dense-and-sparse, as KVQuant; the engine's "
                     "--kv-key-outliers, per channel, without the fp16 rounding of residuals)")
ap.add_argument("--group", type=int, default=32)
ap.add_argument("--residual", type=int, default=128)
ap.add_argument("--bits", type=int, choices=[2, 4], default=2)
ap.add_argument("--threads", type=int, default=os.cpu_count())
a = ap.parse_args()
torch.set_num_threads(a.threads)
C, S, G, R = a.context, a.sink, a.group, a.residual
LEVELS = 2 ** a.bits - 1
HALF = C // 2

tok = transformers.AutoTokenizer.from_pretrained(a.model)
cfg = transformers.AutoConfig.from_pretrained(a.model)
text = open(prose.ensure_prose()).read()
ids = tok(text[: (a.windows + 2) * C * 8], return_tensors="pt").input_ids[0]
windows = torch.stack([ids[i * HALF: i * HALF + C] for i in range(a.windows)])
D = cfg.hidden_size // cfg.num_attention_heads
theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2).float() / D))
angles = torch.cat([torch.outer(torch.arange(C).float(), inv_freq)] * 2, -1)
COS, SIN = angles.cos(), angles.sin()


def rotate_half(x):
    return torch.cat([-x[..., D // 2:], x[..., : D // 2]], -1)


def min_max(x, dim):
    lo, hi = x.amin(dim, keepdim=True), x.amax(dim, keepdim=True)
    s = ((hi - lo) / LEVELS).clamp_min(1e-12)
    return torch.round((x - lo) / s).clamp(0, LEVELS) * s + lo


def mse_fit(x):  # x [..., G], as kernels/kv_quant.cpp's QuantFit::kMse
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    best = min_max(x, -1)
    best_err = ((best - x) ** 2).sum(-1, keepdim=True)
    n, span = x.shape[-1], (hi - lo).clamp_min(1e-12)
    for k in range(11):
        q = torch.floor(torch.clamp((LEVELS - 1 + 2 * k / 10) / span * (x - lo), max=LEVELS) + 0.5)
        sq, sqq = q.sum(-1, True), (q * q).sum(-1, True)
        sx, sqx = x.sum(-1, True), (q * x).sum(-1, True)
        det = n * sqq - sq * sq
        scale = (n * sqx - sq * sx) / det.clamp_min(1e-12)
        ok = (det > 0) & (scale > 0)
        scale = torch.where(ok, scale, torch.ones_like(scale))
        mn = (sx - scale * sq) / n
        y = torch.round((x - mn) / scale).clamp(0, LEVELS) * scale + mn
        err = ((y - x) ** 2).sum(-1, keepdim=True)
        better = ok & (err < best_err)
        best, best_err = torch.where(better, y, best), torch.where(better, err, best_err)
    return best


def dense_and_sparse(g, dim, keep):  # min/max over all but the `keep` farthest, those exact
    if keep == 0:
        return min_max(g, dim)
    far = (g - g.mean(dim, keepdim=True)).abs()
    idx = far.topk(keep, dim).indices
    outlier = torch.zeros_like(g, dtype=torch.bool).scatter(dim, idx, True)
    lo = torch.where(outlier, torch.inf, g).amin(dim, keepdim=True)
    hi = torch.where(outlier, -torch.inf, g).amax(dim, keepdim=True)
    s = ((hi - lo) / LEVELS).clamp_min(1e-12)
    q = torch.round((g - lo) / s).clamp(0, LEVELS) * s + lo
    return torch.where(outlier, g, q)


def quantised_keys(k):  # [B, H, T, D] after RoPE
    b, h, t, d = k.shape
    x = k * COS[:t] - rotate_half(k) * SIN[:t] if a.keys == "pre" else k
    n = ((t - S) // G) * G
    out = x.clone()
    out[:, :, S:S + n] = dense_and_sparse(x[:, :, S:S + n].reshape(b, h, n // G, G, d), 3,
                                          a.key_outliers).reshape(b, h, n, d)
    return out * COS[:t] + rotate_half(out) * SIN[:t] if a.keys == "pre" else out


def quantised_values(v):
    b, h, t, d = v.shape
    g = v.reshape(b, h, t, d // G, G)
    return (mse_fit(g) if a.values == "mse" else min_max(g, 4)).reshape(b, h, t, d)


def kivi_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    b, hq, t, d = query.shape
    rep = hq // key.shape[1]
    kq = key if a.keys == "exact" else quantised_keys(key)
    vq = value if a.values == "exact" else quantised_values(value)
    K, KQ, V, VQ = (x.repeat_interleave(rep, 1) for x in (key, kq, value, vq))
    scale = scaling if scaling is not None else d ** -0.5
    tt, jj = torch.arange(t).view(-1, 1), torch.arange(t).view(1, -1)
    decode = tt >= HALF
    key_quantised = decode & (jj >= S) & (jj < S + ((tt + 1 - S) // R) * R)
    value_quantised = decode & (jj >= S) & (jj < tt + 1 - R)
    logits = torch.where(key_quantised, query @ KQ.transpose(-1, -2),
                         query @ K.transpose(-1, -2)) * scale
    p = logits.masked_fill(jj > tt, float("-inf")).softmax(-1)
    out = (p * ~value_quantised) @ V + (p * value_quantised) @ VQ
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register("ramstream_kivi", kivi_attention)
model = transformers.AutoModelForCausalLM.from_pretrained(
    a.model, dtype=torch.float32, attn_implementation="ramstream_kivi").eval()
nll, n = 0.0, 0
with torch.no_grad():
    for i in range(0, a.windows, 2):
        w = windows[i:i + 2]
        logits = model(w).logits[:, HALF - 1:-1]
        target = w[:, HALF:]
        nll += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum").item()
        n += target.numel()
print(f"context {C} kivi{a.bits} G{G} R{R} sink {S} keys {a.keys} (outliers {a.key_outliers}) "
      f"values {a.values}: "
      f"perplexity {math.exp(nll / n):.4f} over {n} tokens")
