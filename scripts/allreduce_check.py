"""One all-reduce check per rank, started by torchrun: is the collective correct, and how fast?

    python -m torch.distributed.run --standalone --nproc_per_node=N scripts/allreduce_check.py \
        [--backend nccl|gloo] [--mib 256] [--iterations 20]

Each rank fills a tensor with its rank + 1, all-reduces it (sum), and checks every element equals
N(N+1)/2; then times `--iterations` all-reduces. Rank 0 prints one JSON line: backend, world size,
size, algorithm bandwidth and bus bandwidth (the nccl-tests definitions: bus = algo * 2(N-1)/N).
Exit 1 on a wrong sum. Used by scripts/gpu_smoke.py (NCCL) and its CPU test (gloo).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["nccl", "gloo"], default="nccl")
    parser.add_argument("--mib", type=float, default=256.0)
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    if args.backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    elements = max(1, int(args.mib * 1024 * 1024 // 4))
    tensor = torch.full((elements,), float(rank + 1), dtype=torch.float32, device=device)
    dist.all_reduce(tensor)
    expected = world * (world + 1) / 2
    correct = bool(torch.all(tensor == expected).item())
    for _ in range(2):  # warm-up: NCCL builds its rings on the first calls
        dist.all_reduce(tensor)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(args.iterations):
        dist.all_reduce(tensor)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - started) / args.iterations
    flags = torch.tensor([1 if correct else 0], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    all_correct = bool(flags.item())
    if rank == 0:
        algo = elements * 4 / seconds / 1e9
        sys.stdout.write(
            json.dumps(
                {
                    "backend": args.backend,
                    "world_size": world,
                    "mib": round(elements * 4 / 2**20, 1),
                    "correct": all_correct,
                    "seconds_per_allreduce": round(seconds, 6),
                    "algo_gb_per_s": round(algo, 2),
                    "bus_gb_per_s": round(algo * 2 * (world - 1) / world, 2),
                }
            )
            + "\n"
        )
        sys.stdout.flush()
    dist.destroy_process_group()
    return 0 if all_correct else 1


if __name__ == "__main__":
    sys.exit(main())
