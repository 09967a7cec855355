"""The warp-specialised GEMM's split tiles: y through shared memory and TMA, or from registers (CUDA, Hopper).

    python benchmarks/ws_split_store.py --out $OUT            # -> results/ws_split_store_<gpu>.json
    python benchmarks/ws_split_store.py --warm-only --part 0/4  # compile a part of the variants, time nothing

For every benchmark shape and M whose shipped config splits K (`WsConfig.split_k`), times that config with y
stored as it says (`WsConfig.tma_store`) and the other way (with TMA the y tiles take a ring stage:
`gemm_ws.deepest_ring`), beside fp16 cuBLAS: ring of layers over 4x the L2, CUDA-graph replay, median
(`kernels.py`). Since the split tiles' sum leaves through the TMA store too, `tma_store` matters for configs that
split every tile; before, it only moved whole tiles.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from triton_kernels import configs, gemm_ws  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels as kb  # noqa: E402

MS = (32, 64, 128, 256)


def flipped(config: configs.WsConfig) -> configs.WsConfig:
    """The config with y stored the other way, its ring as deep as it was or as fits beside the y tiles."""
    tma = not config.tma_store
    stages = min(config.stages, gemm_ws.deepest_ring(config.block_m, config.warpgroups, tma, config.slice_k))
    return dataclasses.replace(config, tma_store=tma, stages=stages)


def split_cases(gpu: str, sms: int) -> list[tuple[str, int, int, int, configs.WsConfig]]:
    """(shape name, N, K, M, shipped config) of every benchmark shape and M whose config splits K."""
    cases = []
    for name, (n, k) in kb.SHAPES.items():
        for m in MS:
            config = configs.gemm_ws_config(gpu, n, k, m, sms)
            if config.split_k > 1:
                cases.append((name, n, k, m, config))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--tag", default="", help="suffix of the result file's name")
    parser.add_argument("--warm-only", action="store_true", help="run each variant once (compiling), time nothing")
    parser.add_argument("--part", default="0/1", help="i/n: this process's part of the variants")
    args = parser.parse_args()
    assert torch.cuda.is_available() and torch.cuda.get_device_capability(0)[0] == 9, "needs a Hopper GPU"
    kb.WARM_ONLY = args.warm_only
    part = tuple(int(v) for v in args.part.split("/"))
    gpu = torch.cuda.get_device_name(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    print(f"{'shape':11s} {'M':>5s} {'config':44s} {'as shipped':>10s} {'flipped':>8s} {'tma':>6s} {'regs':>6s} "
          f"{'fp16':>6s}")
    for index, (name, n, k, m, config) in enumerate(split_cases(gpu, sms)):
        if not kb.in_part(index, part):
            continue
        ring = kb.prepared_ring(n, k)
        x = torch.randn((m, k), device="cuda", dtype=torch.float16)
        both = {cfg.tma_store: cfg for cfg in (config, flipped(config))}
        us = {tma: kb.time_ring(lambda xx, ww, c=cfg: gemm_ws.gemm_ws(xx, ww, None, c), ring, x)
              for tma, cfg in both.items()}
        dense = [torch.randn((k, n), device="cuda", dtype=torch.float16) for _ in range(len(ring))]
        fp16 = kb.time_ring(lambda xx, ww: F.linear(xx, ww.t()), dense, x)
        label = (f"{config.block_m}x{config.block_n} s{config.split_k}{' tail' if config.split_tail else ''}"
                 f" st{config.stages}{' pers' if config.persistent else ''}{' pair' if config.paired_blocks else ''}")
        rows.append(dict(shape=name, n=n, k=k, m=m, shipped=configs.as_entry(config),
                         tma=configs.as_entry(both[True]), registers=configs.as_entry(both[False]), tma_us=us[True],
                         registers_us=us[False], fp16_us=fp16))
        print(f"{name:11s} {m:5d} {label:44s} {us[config.tma_store]:10.1f} {us[not config.tma_store]:8.1f} "
              f"{us[True]:6.1f} {us[False]:6.1f} {fp16:6.1f}", flush=True)
        del ring, dense
        torch.cuda.empty_cache()
    if args.warm_only:
        return
    result = dict(command="python " + " ".join(sys.argv), gpu=gpu, torch=torch.__version__, rows=rows)
    suffix = f"_{args.tag}" if args.tag else ""
    kb.write_result(Path(__file__).resolve().parent / "results" / f"ws_split_store_{configs.gpu_tag(gpu)}{suffix}.json",
                    result, args.out)


if __name__ == "__main__":
    main()
