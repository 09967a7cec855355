"""M=1 GEMV time against the length of K: fixed cost and streaming rate (needs a CUDA GPU).

    python benchmarks/gemv_scaling.py [--out DIR]   # -> benchmarks/results/gemv_scaling_<gpu>.json

One config (the shipped M=1 entry of 12288x4096, and the same grid shape) over N = 12288 and K from
1024 to 32768, timed as `kernels.py` times (ring of layers over 4x the L2, CUDA graph, median); the
split count is scaled with K so that every program streams the same number of blocks. A straight
line through time against bytes separates what every launch pays whatever its size (the intercept:
launch, the first loads' latency, the split-K epilogue) from the rate at which the words stream
(the slope), which is then compared with the copy bandwidth.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from triton_kernels import configs  # noqa: E402
from triton_kernels.gemv import gemv  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels as kb  # noqa: E402

N = 12288
KS = (1024, 2048, 4096, 8192, 16384, 32768)
BASE_K = 4096  # the shape whose tuned config is used


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ys against xs."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the result file here")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    name = torch.cuda.get_device_name(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    base = configs.gemv_config(name, N, BASE_K, 1, sms)
    bandwidth = kb.copy_bandwidth()
    rows = []
    for k in KS:
        cfg = dataclasses.replace(base, split_k=max(1, base.split_k * k // BASE_K))  # same blocks per program
        ring = kb.prepared_ring(N, k)
        x = torch.randn((1, k), device="cuda", dtype=torch.float16)
        us = kb.time_ring(lambda xx, ww, c=cfg: gemv(xx, ww, None, c), ring, x, replays=25)
        floor = kb.floor_bytes(1, N, k) / bandwidth * 1e6
        rows.append(dict(k=k, config=configs.as_entry(cfg), us=us, floor_us=floor, bytes=kb.floor_bytes(1, N, k)))
        print(f"N={N} K={k:6d} split {cfg.split_k:3d}: {us:7.1f} us, floor {floor:6.1f} ({100 * floor / us:4.1f}%)",
              flush=True)
        del ring
        torch.cuda.empty_cache()
    intercept, slope = fit_line([r["bytes"] for r in rows], [r["us"] for r in rows])
    fit = dict(intercept_us=intercept, streaming_bytes_per_s=1e6 / slope,
               streaming_fraction_of_copy_bandwidth=(1e6 / slope) / bandwidth)
    print(f"time = {intercept:.1f} us + bytes / {1e6 / slope / 1e12:.2f} TB/s "
          f"({100 * fit['streaming_fraction_of_copy_bandwidth']:.0f}% of the {bandwidth / 1e12:.2f} TB/s copy bandwidth)")
    tag = configs.gpu_tag(name)
    path = Path(__file__).resolve().parent / "results" / f"gemv_scaling_{tag}.json"
    data = dict(command="python " + " ".join(sys.argv), gpu=name, torch=torch.__version__, n=N,
                copy_bandwidth_Bps=bandwidth, rows=rows, fit=fit)
    kb.write_result(path, data, args.out)
    print("wrote", path)


if __name__ == "__main__":
    main()
