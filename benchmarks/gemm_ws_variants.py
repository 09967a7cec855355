"""Warp-specialised Hopper GEMM (`triton_kernels/gemm_ws.py`): its configs against fp16 cuBLAS and the swapped GEMM.

Needs a Hopper GPU. First checks every variant against a float64 reference (ragged M, N and K, bias, groups of
128, 256 and all of K; relative error under 1e-2) and exits non-zero on a failure; then times, with the ring of
layers and CUDA-graph replay of `kernels.py`, per (shape, M): fp16 cuBLAS, the swapped GEMM as shipped and each
`WsConfig` of VARIANTS. Prints one JSON row per (shape, M) and writes `results/gemm_ws_variants_<gpu>.json`:

    python benchmarks/gemm_ws_variants.py --ms 128,256,1024 --out /tmp/out
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.kernels import (SHAPES, prepared_ring, random_prepared, ring_length, time_ring,  # noqa: E402
                               write_result)
from triton_kernels import KernelChoice, w4a16_linear  # noqa: E402
from triton_kernels import configs  # noqa: E402
from triton_kernels.configs import WsConfig  # noqa: E402
from triton_kernels.gemm_ws import gemm_ws  # noqa: E402
from triton_kernels.prepare import dequantize_prepared  # noqa: E402
from triton_kernels.testing import RTOL  # noqa: E402

VARIANTS = (WsConfig(256, 3, False), WsConfig(256, 3, True), WsConfig(128, 4, False), WsConfig(128, 4, True),
            WsConfig(128, 5, True))
# Checked against float64 first: tile heights, persistent or not, K split over programs, paired blocks
CHECKED = (WsConfig(256, 3, False), WsConfig(128, 4, True), WsConfig(256, 3, True), WsConfig(64, 6, False, split_k=3),
           WsConfig(128, 5, True, split_k=2), WsConfig(32, 8, True, split_k=4),
           WsConfig(64, 6, True, split_k=3, paired_blocks=True))
CHECK_CASES = ((256, 512, 256, 128, False), (200, 1000, 300, 128, True), (384, 384, 17, 128, False),  # N K M group bias
               (128, 4096, 1024, 4096, False), (4096, 4096, 1000, 128, True), (136, 256, 64, 256, False))


def name(c: WsConfig) -> str:
    return (f"ws_{c.block_m}_{c.stages}_{int(c.persistent)}" + (f"_split{c.split_k}" if c.split_k > 1 else "")
            + ("_paired" if c.paired_blocks else ""))


def check() -> list[dict]:
    rows = []
    for config in CHECKED:
        for n, k, m, group, bias in CHECK_CASES:
            w = random_prepared(n, k, group=group)
            x = torch.randn((m, k), device="cuda", dtype=torch.float16)
            b = torch.randn(n, device="cuda", dtype=torch.float16) if bias else None
            ref = x.double() @ dequantize_prepared(w).double() + (b.double() if bias else 0)  # (M, N)
            y = gemm_ws(x, w, b, config)
            err = ((y.double() - ref).norm() / ref.norm()).item()
            rows.append(dict(n=n, k=k, m=m, group=group, bias=bias, config=configs.as_entry(config), rel_err=err,
                             ok=err < RTOL))
    bad = [r for r in rows if not r["ok"]]
    print(f"check: {len(rows) - len(bad)}/{len(rows)} under {RTOL}, worst {max(r['rel_err'] for r in rows):.2e}")
    if bad:
        raise SystemExit(f"gemm_ws check FAILED: {bad[:5]}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--ms", default="128,256,1024")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    assert torch.cuda.is_available() and torch.cuda.get_device_capability(0)[0] == 9, "needs a Hopper GPU"
    gpu = torch.cuda.get_device_name(0)
    path = Path(__file__).resolve().parent / "results" / f"gemm_ws_variants_{configs.gpu_tag(gpu)}.json"
    data = dict(command="python " + " ".join(sys.argv), gpu=gpu, check=check(), time=[])
    for shape in args.shapes.split(","):
        n, k = SHAPES[shape]
        ours = prepared_ring(n, k)
        fp16 = [torch.randn((n, k), device="cuda", dtype=torch.float16) for _ in range(ring_length(2 * n * k))]
        for m in (int(v) for v in args.ms.split(",")):
            x = torch.randn((m, k), device="cuda", dtype=torch.float16)
            row = dict(shape=shape, n=n, k=k, m=m, fp16_us=time_ring(lambda xx, ww: F.linear(xx, ww), fp16, x))
            row["swapped_us"] = time_ring(
                lambda xx, ww: w4a16_linear(xx, ww, kernel=KernelChoice.GEMM_SWAPPED), ours, x)
            for config in VARIANTS:
                row[name(config) + "_us"] = time_ring(lambda xx, ww, c=config: gemm_ws(xx, ww, None, c), ours, x)
            print(json.dumps(row), flush=True)
            data["time"].append(row)
            write_result(path, data, args.out)
        del ours, fp16
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
