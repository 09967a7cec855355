"""The swapped GEMM with the scale inside the weight operand: each block in one depth-128 product against two
depth-64 products (`GemmConfig.split_dot`), tile by tile, with fp16 cuBLAS beside (CUDA).

    python benchmarks/split_dot.py --out $OUT   # -> results/split_dot_<gpu>.json

Every (shape, M, tile) is timed both ways in the same process on the same ring of layers (ring over 4x the
L2, CUDA-graph replay, median, as `kernels.py`); `--warm-only` compiles this part's work and times nothing.
The split product also checks bit for bit against the single one on the first layer of each ring.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from triton_kernels.configs import GemmConfig, as_entry, gpu_tag  # noqa: E402
from triton_kernels.gemm_swapped import gemm_swapped  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels as kb  # noqa: E402

# (block_m, block_n, num_warps, split_k) a scaled-operand tile: the accumulator takes block_m * block_n /
# (32 * num_warps) registers a thread, 32 or 64 on the first tiles of each M, 128 on the 256-wide ones
TILES = {
    64: ((64, 64, 4, 2), (64, 128, 8, 1)),
    128: ((128, 64, 4, 1), (128, 128, 8, 1)),
    256: ((128, 64, 4, 1), (128, 128, 8, 1), (256, 128, 8, 1), (128, 256, 8, 1)),
    1024: ((256, 64, 4, 1), (128, 128, 8, 1), (256, 128, 8, 1), (128, 256, 8, 1)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(kb.SHAPES))
    parser.add_argument("--ms", default=",".join(map(str, TILES)))
    parser.add_argument("--out", type=Path, default=None, help="also copy the result file here")
    parser.add_argument("--warm-only", action="store_true")
    parser.add_argument("--part", default="0/1", help="i/n: with --warm-only, every n-th (shape, M, tile) from i")
    args = parser.parse_args()
    kb.WARM_ONLY = args.warm_only
    part = tuple(int(v) for v in args.part.split("/"))
    rows, index = [], -1
    for shape in args.shapes.split(","):
        n, k = kb.SHAPES[shape]
        ring = kb.prepared_ring(n, k)
        w0 = ring[0]
        dense = [] if args.warm_only else [torch.randn((n, k), device="cuda", dtype=torch.float16)
                                           for _ in range(kb.ring_length(2 * n * k))]
        for m in (int(v) for v in args.ms.split(",")):
            x = torch.randn((m, k), device="cuda", dtype=torch.float16)
            fp16 = float("nan") if args.warm_only else kb.time_ring(lambda xx, ww: F.linear(xx, ww), dense, x)
            for block_m, block_n, warps, split in TILES[m]:
                index += 1
                if args.warm_only and not kb.in_part(index, part):
                    continue
                whole = GemmConfig(block_m=block_m, block_n=block_n, split_k=split, num_warps=warps, num_stages=3,
                                   scale_operand=True)
                halves = dataclasses.replace(whole, split_dot=True)
                one, two = (kb.time_ring(lambda xx, ww, c=c: gemm_swapped(xx, ww, None, c), ring, x)
                            for c in (whole, halves))
                if args.warm_only:
                    continue
                same = torch.equal(gemm_swapped(x, w0, None, whole), gemm_swapped(x, w0, None, halves))
                row = dict(shape=shape, n=n, k=k, m=m, tile=as_entry(whole), fp16_us=fp16, one_product_us=one,
                           two_products_us=two, accumulator_registers=block_m * block_n // (32 * warps),
                           bit_identical=same)
                rows.append(row)
                print(f"{shape:12s} M={m:5d} {block_m:3d}x{block_n:3d} w{warps} k{split}: one {one:7.1f} us, "
                      f"two {two:7.1f} us ({one / two:4.2f}x), fp16 {fp16:7.1f}, identical {same}", flush=True)
        del ring, dense, w0
        torch.cuda.empty_cache()
    if args.warm_only:
        return
    name = torch.cuda.get_device_name(0)
    data = dict(command="python " + " ".join(sys.argv), gpu=name, torch=torch.__version__, rows=rows)
    results = Path(__file__).resolve().parent / "results"
    kb.write_result(results / f"split_dot_{gpu_tag(name)}.json", data, args.out)


if __name__ == "__main__":
    main()
