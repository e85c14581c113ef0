"""The peer's side of bench/peer_dist: PyTorch DistributedDataParallel (Gloo) over transformers.

What a CPU user runs instead of `ramstream launch`: N processes (torch.multiprocessing), each on
its own share of the CPUs (the same split as ramstream's launcher), AutoModelForCausalLM in fp32,
DDP with its bucketed all-reduce overlapped with backward, `no_sync` on all but the last of the
process's micro-batches, clip_grad_norm_ 1.0, torch.optim.AdamW.

    python ddp_step.py --model DIR --tokens FILE --nproc 2 --micro 2 --seq 256 [--steps 5]

Each process takes its rows of the global batch (nproc x micro rows of seq tokens). The last
stdout line is one JSON object: step_ms (rank 0, every step), peak_rss_mib (per rank, VmHWM),
versions.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "peer_cpu_train"))
from hf_step import vm_hwm_mib  # noqa: E402  (peak RSS of this process)


def worker(rank, a, port, queue):
    import numpy as np
    import torch
    import torch.distributed as dist
    import transformers

    cpus = sorted(os.sched_getaffinity(0))
    share = cpus[rank * len(cpus) // a.nproc:(rank + 1) * len(cpus) // a.nproc] or cpus
    os.sched_setaffinity(0, share)
    torch.set_num_threads(len(share))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=a.nproc)
    torch.manual_seed(0)
    rows = a.nproc * a.micro
    ids = np.fromfile(a.tokens, dtype="<i8", count=rows * a.seq)
    ids = torch.from_numpy(ids.reshape(rows, a.seq).copy())
    mine = ids[rank * a.micro:(rank + 1) * a.micro]
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.config.use_cache = False
    model.train()
    ddp = torch.nn.parallel.DistributedDataParallel(model) if a.nproc > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)

    def step():
        for m in range(a.micro):
            row = mine[m:m + 1]
            last = m == a.micro - 1
            ctx = ddp.no_sync() if (a.nproc > 1 and not last) else _null()
            with ctx:
                # Mean over the global batch: each micro-batch's mean loss / all of them.
                loss = ddp(input_ids=row, labels=row).loss / (a.micro * a.nproc)
                loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step_ms = []
    for _ in range(a.steps):
        if a.nproc > 1:
            dist.barrier()
        t0 = time.perf_counter()
        step()
        step_ms.append(1e3 * (time.perf_counter() - t0))
    queue.put((rank, step_ms, vm_hwm_mib(), torch.__version__, transformers.__version__))
    dist.destroy_process_group()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--port", type=int, default=29700)
    a = ap.parse_args()
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, a, a.port, queue)) for r in range(a.nproc)]
    for p in procs:
        p.start()
    results = sorted(queue.get() for _ in procs)
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"ddp_step: a rank exited {p.exitcode}")
    print(json.dumps({
        "step_ms": results[0][1],
        "peak_rss_mib": [r[2] for r in results],
        "versions": {"torch": results[0][3], "transformers": results[0][4]},
    }))


if __name__ == "__main__":
    main()
