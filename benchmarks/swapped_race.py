"""The swapped GEMM's one-dot scaled path with and without a full MMA wait after each block (CUDA, Hopper).

    python benchmarks/swapped_race.py --out $OUT   # -> results/swapped_race_<gpu>.json

With the scale in the operand and one dot a block, Triton leaves a block's MMAs in flight while the next block
is dequantised into registers. `gemm_swapped.waits_each_block` decides where the kernel waits for them instead.
This script runs each tile under three policies (never wait, the shipped rule, always wait):
- correctness: RUNS launches on fresh random x (fp16 and bf16, M = 8, 300, 1000), each against x @ W in float32 on
  the GPU; a run is wrong when its relative error is 1e-2 or more (the tests' bound). A race shows as a few wrong
  runs with whole columns off, not as a slightly larger error;
- speed: fp16, M=1024, ring of layers over 4x the L2, CUDA-graph replay, median (`kernels.py`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import triton_kernels.gemm_swapped as swapped  # noqa: E402
from triton_kernels.configs import GemmConfig, as_entry, gpu_tag  # noqa: E402
from triton_kernels.prepare import dequantize_prepared, prepare  # noqa: E402
from triton_kernels.testing import random_awq_layer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels as kb  # noqa: E402

TILES = {  # one dot a block, the scale in the operand
    "64x256, 8 warps (128 rows a warpgroup)": GemmConfig(block_m=64, block_n=256, num_warps=8, scale_operand=True),
    "128x256, 8 warps (128 rows a warpgroup)": GemmConfig(block_m=128, block_n=256, num_warps=8, scale_operand=True),
    "256x128, 8 warps (64 rows a warpgroup)": GemmConfig(block_m=256, block_n=128, num_warps=8, scale_operand=True),
    "64x64, 4 warps (64 rows a warpgroup)": GemmConfig(block_m=64, block_n=64, num_warps=4, scale_operand=True),
}
RULE = swapped.waits_each_block
POLICIES = {"never": lambda c: False, "rule": RULE, "always": lambda c: True}
SPEED_SHAPES = ("70b_o", "7b_down")


def wrong_runs(config: GemmConfig, dtype: torch.dtype, m: int, runs: int) -> tuple[int, float]:
    """(runs of `runs` whose relative error reaches 1e-2, the worst error) on 1024x768, group 128."""
    layer = random_awq_layer(1024, 768, 128, dtype, device="cuda", seed=1)
    w = prepare(layer.qweight, layer.qzeros, layer.scales, 128)
    wf = dequantize_prepared(w).float()  # (K, N)
    wrong, worst = 0, 0.0
    for _ in range(runs):
        x = torch.randn((m, 1024), device="cuda").to(dtype)
        ref = x.float() @ wf  # (M, N)
        err = float((swapped.gemm_swapped(x, w, None, config).float() - ref).norm() / ref.norm())
        worst = max(worst, err)
        wrong += not err < 1e-2
    return wrong, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for policy, rule in POLICIES.items():
        swapped.waits_each_block = rule  # the kernel launch looks the rule up here
        for tile, config in TILES.items():
            row = dict(policy=policy, tile=tile, config=as_entry(config), waits=rule(config), wrong={})
            for dtype in (torch.float16, torch.bfloat16):
                for m in (8, 300, 1000):
                    wrong, worst = wrong_runs(config, dtype, m, args.runs)
                    row["wrong"][f"{str(dtype)[6:]} M={m}"] = dict(wrong=wrong, runs=args.runs, worst_error=worst)
            for shape in SPEED_SHAPES:
                n, k = kb.SHAPES[shape]
                ring = kb.prepared_ring(n, k)
                x = torch.randn((1024, k), device="cuda", dtype=torch.float16)
                row[f"{n}x{k}_M1024_us"] = kb.time_ring(lambda xx, ww, c=config: swapped.gemm_swapped(xx, ww, None, c),
                                                        ring, x)
                del ring
            rows.append(row)
            wrong = sum(v["wrong"] for v in row["wrong"].values())
            times = " ".join(f"{key[:-3]} {value:.1f} us" for key, value in row.items() if key.endswith("_us"))
            print(f"{policy:6s} {tile:42s} waits {str(row['waits']):5s} wrong {wrong:3d}/{6 * args.runs}  {times}",
                  flush=True)
    swapped.waits_each_block = RULE
    data = dict(command="python " + " ".join(sys.argv), gpu=torch.cuda.get_device_name(0), rows=rows)
    name = f"swapped_race_{gpu_tag(torch.cuda.get_device_name(0))}.json"
    path = Path(__file__).resolve().parent / "results" / name
    path.write_text(json.dumps(data, indent=1) + "\n")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / name).write_text(path.read_text())


if __name__ == "__main__":
    main()
