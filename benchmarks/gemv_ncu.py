"""One M=1 GEMV launch per config, for Nsight Compute (needs a CUDA GPU and `ncu`).

    ncu --clock-control none --set full -k regex:gemv_kernel --launch-skip 2 --launch-count 1 \\
        -o /tmp/gemv python benchmarks/gemv_ncu.py --shape 7b_qkv --config tuned

Each config runs three times (two warm-ups that compile and settle, then the profiled one); `--config
tuned` is the shipped M=1 entry, `--config tuned_float32` the same entry with float32 products instead
of packed fp16 ones, `--config one_block` the earlier one-block-per-iteration entry.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from triton_kernels import configs  # noqa: E402
from triton_kernels.configs import GemvConfig  # noqa: E402
from triton_kernels.gemv import gemv  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels as kb  # noqa: E402

# The M=1 entry of 12288x4096 before multi-block steps (results/kernels_NVIDIA_H100_80GB_HBM3_splitk.json)
ONE_BLOCK = GemvConfig(block_n=64, split_k=2, num_warps=4, num_stages=2, max_m=8, prefetch=True, loop_stages=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="7b_qkv", choices=list(kb.SHAPES))
    parser.add_argument("--config", default="tuned", choices=("tuned", "tuned_float32", "one_block"))
    args = parser.parse_args()
    n, k = kb.SHAPES[args.shape]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    cfg = configs.gemv_config(torch.cuda.get_device_name(0), n, k, 1, sms) if args.config != "one_block" else ONE_BLOCK
    if args.config == "tuned_float32":
        cfg = dataclasses.replace(cfg, half2=False)
    w = kb.random_prepared(n, k)
    x = torch.randn((1, k), device="cuda", dtype=torch.float16)
    for _ in range(3):
        gemv(x, w, None, cfg)
    torch.cuda.synchronize()
    print(args.shape, args.config, cfg)


if __name__ == "__main__":
    main()
