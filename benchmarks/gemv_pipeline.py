"""M=1 GEMV: software-pipelined block loop and wider split-K against the tuned configs (needs a CUDA GPU).

    python benchmarks/gemv_pipeline.py --warm-only --part i/J   # compile this part's variants (J processes)
    python benchmarks/gemv_pipeline.py                          # time -> benchmarks/results/gemv_pipeline_<gpu>.json

Question: the GEMV is bound by each program's serial chain of block iterations (benchmarks/README.md,
"What limits it"). Does (1) Triton's pipeliner (`loop_stages`: cp.async copies of later blocks) or
(2) more, shorter programs (larger split-K, smaller tiles) shorten it? Every candidate is timed with
the ring-of-layers CUDA-graph timing of `kernels.py`; the tuned config, the best candidate of each
family and the tuned GEMM are then re-timed twice with more replays, so that the reported winner is
not just the luckiest of many noisy draws.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels as kb  # noqa: E402  (benchmarks/kernels.py: timing helpers)

from triton_kernels import configs  # noqa: E402
from triton_kernels.configs import GemvConfig  # noqa: E402
from triton_kernels.gemm import gemm  # noqa: E402
from triton_kernels.gemv import gemv, gemv_kernel  # noqa: E402

SHAPES = ("7b_qkv", "7b_o", "7b_up_gate", "70b_up_gate")  # default subset of kernels.SHAPES
# (block_n, subtiles, num_warps, k_slices): the autotuner's tiles plus two narrower, 2-warp ones (more
# programs resident); k_slices > 1 spreads a program's warps over K slices (they need fewer columns per
# subtile than 8 per warp, or Triton spends every warp on columns)
TILES = ((32, 1, 2, 1), (64, 1, 2, 1), (64, 1, 4, 1), (128, 2, 4, 1), (128, 1, 8, 1), (256, 2, 8, 1))
SPLITS = (1, 2, 4, 8, 16, 32)
LOOP_STAGES = (0, 2, 3, 4)  # 0: plain loop (today); else tl.range(num_stages=S)
MAX_WAVES = 32  # skip grids over 32 programs per multiprocessor
CONFIRM_REPLAYS = 25


def candidates(n: int, k: int, sms: int, space: dict) -> list[GemvConfig]:
    blocks = -(-k // 128)
    out = []
    for block_n, subtiles, warps, slices in space["tiles"]:
        for split in space["splits"]:
            if split > blocks or -(-n // block_n) * split > sms * MAX_WAVES:
                continue
            for step, stages, prefetch, half2, max_registers in itertools.product(
                    space["steps"], space["stages"], (False, True), space["half2"], space["max_registers"]):
                if step * slices > -(-blocks // split):
                    continue  # an iteration longer than the split's blocks only adds empty loads
                out.append(GemvConfig(block_n=block_n, split_k=split, num_warps=warps, num_stages=2, max_m=8,
                                      subtiles=subtiles, prefetch=prefetch, loop_stages=stages, blocks_per_step=step,
                                      half2=half2, k_slices=slices, max_registers=max_registers))
    return out


def compiled_report() -> list[dict]:
    """Per compiled GEMV variant: registers, shared memory, and whether the PTX holds cp.async copies."""
    rows = []
    try:
        for cache in gemv_kernel.device_caches.values():
            for key, kernel in cache[0].items():
                ptx = kernel.asm["ptx"] if "ptx" in kernel.asm else ""
                rows.append(dict(key=str(key)[-400:], n_regs=getattr(kernel, "n_regs", None),
                                 n_spills=getattr(kernel, "n_spills", None), shared=kernel.metadata.shared,
                                 cp_async=ptx.count("cp.async.cg") + ptx.count("cp.async.ca"),
                                 ld_global_v4=ptx.count("ld.global.v4") + ptx.count("ld.global.L1::evict_last.v4")))
    except Exception as exc:  # noqa: BLE001 - the report is a diagnosis, never a reason to lose the timings
        rows.append(dict(error=repr(exc)[:300]))
    return rows


def label(c: GemvConfig) -> str:
    return (f"bn{c.block_n}/sub{c.subtiles}/w{c.num_warps}/ks{c.k_slices}/split{c.split_k}/"
            f"{'pf' if c.prefetch else 'nopf'}/stages{c.loop_stages}/step{c.blocks_per_step}{'/half2' if c.half2 else ''}"
            f"{f'/maxreg{c.max_registers}' if c.max_registers else ''}")


def run_shape(shape: str, n: int, k: int, sms: int, bw: float, part, space: dict) -> dict:
    name = torch.cuda.get_device_name(0)
    ring = kb.prepared_ring(n, k)
    x = torch.randn((1, k), device="cuda", dtype=getattr(torch, space["x_dtype"]))
    tuned = configs.gemv_config(name, n, k, 1, sms)
    tried = []
    for index, cfg in enumerate(candidates(n, k, sms, space)):
        if kb.WARM_ONLY and not kb.in_part(index, part):
            continue
        try:
            t = kb.time_ring(lambda xx, ww, c=cfg: gemv(xx, ww, None, c), ring, x, replays=5)
        except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory: record and go on
            tried.append(dict(label=label(cfg), config=configs.as_entry(cfg), error=type(exc).__name__))
            continue
        tried.append(dict(label=label(cfg), config=configs.as_entry(cfg), us=t))
    if kb.WARM_ONLY:
        del ring
        return {}
    ok = [r for r in tried if "us" in r]
    families = {"best_plain": lambda c: c["loop_stages"] == 0, "best_pipelined": lambda c: c["loop_stages"] > 0}
    for step in space["steps"]:
        families[f"best_step{step}"] = lambda c, step=step: c.get("blocks_per_step", 1) == step
    for slices in sorted({t[3] for t in space["tiles"]}):
        families[f"best_slices{slices}"] = lambda c, slices=slices: c.get("k_slices", 1) == slices
    for cap in space["max_registers"]:
        families[f"best_maxreg{cap}"] = lambda c, cap=cap: c.get("max_registers", 0) == cap
    if len(space["half2"]) > 1:
        families["best_float32"] = lambda c: not c.get("half2", False)
        families["best_half2"] = lambda c: c.get("half2", False)
    best = {}
    for family, member in families.items():
        rows = [r for r in ok if member(r["config"])]
        if rows:
            best[family] = min(rows, key=lambda r: r["us"])
    # The tuned tile with only the pipeline depth changed: the pipeliner's effect alone.
    same_tile = {s: next((r["us"] for r in ok if r["config"] == configs.as_entry(
        GemvConfig(**{**configs.as_entry(tuned), "loop_stages": s}))), None) for s in space["stages"]}
    # "fallback": what a GPU without tuned entries runs (configs.default_gemv)
    finalists = {"tuned": tuned, "fallback": configs.default_gemv(n, k, 1, sms),
                 **{family: GemvConfig(**r["config"]) for family, r in best.items()}}
    gemm_cfg = configs.gemm_config(name, n, k, 1, sms)
    confirm = {}
    for rep in range(2):  # two passes: the spread between them is the noise
        for key, cfg in finalists.items():
            confirm.setdefault(key, []).append(
                kb.time_ring(lambda xx, ww, c=cfg: gemv(xx, ww, None, c), ring, x, replays=CONFIRM_REPLAYS))
        confirm.setdefault("gemm_tuned", []).append(
            kb.time_ring(lambda xx, ww: gemm(xx, ww, None, gemm_cfg), ring, x.half(), replays=CONFIRM_REPLAYS))
    del ring
    torch.cuda.empty_cache()
    glite_us = None
    glite = kb.gemlite_ring(n, k, kb.ring_length(n * k // 2))
    if glite is not None:
        try:
            glite_us = kb.time_ring(lambda xx, ww: ww(xx), glite, x.half(), replays=CONFIRM_REPLAYS)
        except Exception as exc:  # noqa: BLE001
            print(f"gemlite failed: {exc!r}")
        del glite
        torch.cuda.empty_cache()
    floor = kb.floor_bytes(1, n, k) / bw * 1e6
    row = dict(shape=shape, n=n, k=k, floor_us=floor, gemlite_us=glite_us, gemm_tuned=configs.as_entry(gemm_cfg),
               finalists={kk: configs.as_entry(c) for kk, c in finalists.items()}, confirm_us=confirm,
               tuned_with_loop_stages_us=same_tile, tried=tried)
    med = {kk: min(v) for kk, v in confirm.items()}
    families_text = " | ".join(f"{family} {med[family]:6.1f} ({100 * floor / med[family]:4.1f}%) {r['label']}"
                               for family, r in best.items())
    print(f"{shape:12s} floor {floor:5.1f} | tuned {med['tuned']:6.1f} ({100 * floor / med['tuned']:4.1f}%) | "
          f"{families_text} | gemm {med['gemm_tuned']:6.1f} | gemlite {glite_us or float('nan'):6.1f} | "
          f"tuned tile by stages {same_tile}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm-only", action="store_true", help="run this part's variants once (compile only)")
    parser.add_argument("--part", default="0/1", help="i/n: with --warm-only, every n-th candidate from i")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of " + ",".join(kb.SHAPES))
    parser.add_argument("--tag", default="", help="suffix of the result file name: gemv_pipeline_<gpu>[_<tag>].json")
    parser.add_argument("--out", type=Path, default=None, help="also copy the result file here")
    parser.add_argument("--steps", default="1", help="comma-separated blocks_per_step values to sweep")
    parser.add_argument("--x-dtype", default="float16", choices=("float16", "float32"),
                        help="activations the GEMV reads (float32: no conversion in the kernel)")
    parser.add_argument("--half2", default="0", help="comma-separated 0/1: products in float32, packed fp16 or both")
    parser.add_argument("--stages", default=",".join(map(str, LOOP_STAGES)), help="comma-separated loop_stages")
    parser.add_argument("--splits", default=",".join(map(str, SPLITS)), help="comma-separated split_k values")
    parser.add_argument("--tiles", default=",".join("/".join(map(str, t)) for t in TILES),
                        help="comma-separated block_n/subtiles/num_warps[/k_slices] tiles")
    parser.add_argument("--max-registers", default="0",
                        help="comma-separated register caps per thread (0: the compiler's choice)")
    args = parser.parse_args()
    space = dict(steps=[int(v) for v in args.steps.split(",")], stages=[int(v) for v in args.stages.split(",")],
                 splits=[int(v) for v in args.splits.split(",")],
                 tiles=[tuple(int(v) for v in (t + "/1").split("/")[:4]) for t in args.tiles.split(",")],
                 max_registers=[int(v) for v in args.max_registers.split(",")], x_dtype=args.x_dtype,
                 half2=[bool(int(v)) for v in args.half2.split(",")])
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    kb.WARM_ONLY = args.warm_only
    part = tuple(int(v) for v in args.part.split("/"))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    bw = float("nan") if args.warm_only else kb.copy_bandwidth()
    t0 = time.time()
    rows = []
    name = torch.cuda.get_device_name(0)
    tag = configs.gpu_tag(name) + (f"_{args.tag}" if args.tag else "")
    path = Path(__file__).resolve().parent / "results" / f"gemv_pipeline_{tag}.json"
    for shape in args.shapes.split(","):
        n, k = kb.SHAPES[shape]
        row = run_shape(shape, n, k, sms, bw, part, space)
        if args.warm_only:
            continue
        rows.append(row)
        data = dict(command="python " + " ".join(sys.argv), gpu=name, torch=torch.__version__, space=space,
                    triton=triton.__version__, copy_bandwidth_Bps=bw, seconds=time.time() - t0, rows=rows)
        kb.write_result(path, data, args.out)
    if args.warm_only:
        print(f"warmed part {part[0]}/{part[1]}")
        return
    report = compiled_report()
    if args.out:
        (args.out / f"gemv_pipeline_compiled_{tag}.json").write_text(json.dumps(report, indent=1))
    piped = [r for r in report if r.get("cp_async")]
    print(f"compiled variants: {len(report)}, with cp.async in the PTX: {len(piped)}")
    print("wrote", path)


if __name__ == "__main__":
    main()
