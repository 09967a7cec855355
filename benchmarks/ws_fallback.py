"""The warp-specialised GEMM's fallback on shapes the tuning never saw: which tiles (CUDA, Hopper).

    python benchmarks/ws_fallback.py --out $OUT   # -> results/ws_fallback_<gpu>.json

`configs.default_gemm_ws` takes three warpgroups' 128 x 192 tiles where their waves of programs do more useful work
(`configs.wave_fill`), and where two warpgroups' 128 x 128 tiles fill at most half a wave, the two warpgroups on K
slices of 128 x 64 tiles (`WsConfig.slice_k`). Its rules were fitted on the seven benchmark shapes; here they meet the
layers of other models (Llama-3-8B, Qwen2.5-7B and -14B). Each (shape, M) is timed with the fallback's two-warpgroup
config on 128-column tiles, its three-warpgroup tile and, where the rule takes them, its K slices, beside fp16
cuBLAS: ring of layers over 4x the L2, CUDA-graph replay, median (`kernels.py`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from triton_kernels import configs  # noqa: E402
from triton_kernels.gemm_ws import gemm_ws  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels as kb  # noqa: E402

SHAPES = {  # name: (N, K)
    "llama3_8b_qkv": (6144, 4096), "llama3_8b_up_gate": (28672, 4096), "llama3_8b_down": (4096, 14336),
    "qwen2.5_7b_qkv": (4608, 3584), "qwen2.5_7b_o": (3584, 3584), "qwen2.5_7b_up_gate": (37888, 3584),
    "qwen2.5_7b_down": (3584, 18944), "qwen2.5_14b_qkv": (7168, 5120), "qwen2.5_14b_up_gate": (27648, 5120),
    "qwen2.5_14b_down": (5120, 13824),
}
MS = (128, 256, 512, 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    assert torch.cuda.is_available() and torch.cuda.get_device_capability(0)[0] == 9, "needs a Hopper GPU"
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    print(f"{'shape':22s} {'M':>5s} {'fill 2/3':>11s} {'chosen':>7s} {'2 wg us':>8s} {'3 wg us':>8s} {'slices':>7s} "
          f"{'fp16':>7s} {'right':>5s}")
    for name, (n, k) in SHAPES.items():
        ring = kb.prepared_ring(n, k)
        dense = [torch.randn((k, n), device="cuda", dtype=torch.float16) for _ in range(len(ring))]
        for m in MS:
            x = torch.randn((m, k), device="cuda", dtype=torch.float16)
            chosen = configs.default_gemm_ws(n, k, m, sms)
            options = {"two": configs.two_warpgroup_gemm_ws(n, k, m, sms, k_slices=False),
                       "three": configs.WS_WIDE_CONFIG}
            sliced = configs.two_warpgroup_gemm_ws(n, k, m, sms)
            if sliced.slice_k:
                options["slices"] = sliced
            us = {key: kb.time_ring(lambda xx, ww, c=cfg: gemm_ws(xx, ww, None, c), ring, x)
                  for key, cfg in options.items()}
            picked = next(key for key, cfg in options.items() if cfg == chosen)
            fp16 = kb.time_ring(lambda xx, ww: F.linear(xx, ww.t()), dense, x)
            fills = (configs.wave_fill(m, n, options["two"].block_m, 128, sms), configs.wave_fill(m, n, 128, 192, sms))
            right = us[picked] <= min(us.values())
            rows.append(dict(shape=name, n=n, k=k, m=m, chosen=configs.as_entry(chosen), picked=picked,
                             **{key: configs.as_entry(cfg) for key, cfg in options.items()},
                             **{f"{key}_us": t for key, t in us.items()}, fp16_us=fp16, fill_two=fills[0],
                             fill_three=fills[1], chose_the_faster=right))
            print(f"{name:22s} {m:5d} {fills[0]:5.2f}/{fills[1]:4.2f} {picked:>7s} {us['two']:8.1f} {us['three']:8.1f} "
                  f"{us.get('slices', float('nan')):7.1f} {fp16:7.1f} {'yes' if right else 'NO':>5s}", flush=True)
        del ring, dense
        torch.cuda.empty_cache()
    right = sum(r["chose_the_faster"] for r in rows)
    print(f"the fallback chose the fastest of its options on {right} of {len(rows)}")
    gpu = torch.cuda.get_device_name(0)
    result = dict(command="python " + " ".join(sys.argv), gpu=gpu, torch=torch.__version__, rows=rows,
                  chose_the_faster=right)
    kb.write_result(Path(__file__).resolve().parent / "results" / f"ws_fallback_{configs.gpu_tag(gpu)}.json",
                    result, args.out)


if __name__ == "__main__":
    main()
