"""One swapped-GEMM launch per run, and fp16 cuBLAS on the same product, for Nsight Compute (CUDA and `ncu`).

    ncu --clock-control none --section SpeedOfLight --section WarpStateStats -k regex:gemm_swapped_kernel \\
        --launch-skip 2 --launch-count 1 python benchmarks/gemm_ncu.py --shape 70b_up_gate --m 1024
    ncu ... -k regex:sm90 ... python benchmarks/gemm_ncu.py --shape 70b_up_gate --m 1024 --cublas

Each runs three times (two warm-ups that compile and settle, then the profiled one). `--config tuned` is
this GPU's shipped entry for (shape, M); `--config flipped` the same entry with the scale on the other side
of the MMA (`GemmConfig.scale_operand`).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from triton_kernels import configs  # noqa: E402
from triton_kernels.gemm_swapped import gemm_swapped  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels as kb  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="70b_up_gate", choices=list(kb.SHAPES))
    parser.add_argument("--m", type=int, default=1024)
    parser.add_argument("--config", default="tuned", choices=("tuned", "flipped"))
    parser.add_argument("--cublas", action="store_true", help="run fp16 cuBLAS on the same product instead")
    args = parser.parse_args()
    n, k = kb.SHAPES[args.shape]
    x = torch.randn((args.m, k), device="cuda", dtype=torch.float16)
    if args.cublas:
        w16 = torch.randn((n, k), device="cuda", dtype=torch.float16)
        run, what = (lambda: F.linear(x, w16)), "fp16 cuBLAS"
    else:
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        cfg = configs.gemm_swapped_config(torch.cuda.get_device_name(0), n, k, args.m, sms)
        if args.config == "flipped":
            cfg = dataclasses.replace(cfg, scale_operand=not cfg.scale_operand)
        w = kb.random_prepared(n, k)
        run, what = (lambda: gemm_swapped(x, w, None, cfg)), str(cfg)
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    print(args.shape, args.m, what)


if __name__ == "__main__":
    main()
