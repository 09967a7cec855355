"""W4A16 kernel benchmark, GPU correctness check and config autotuner (needs a CUDA GPU).

    python benchmarks/kernels.py                 # check, then benchmark -> benchmarks/results/kernels_<gpu>.json
    python benchmarks/kernels.py --autotune      # check, then tune -> triton_kernels/configs/<gpu>.json
    python benchmarks/kernels.py --autotune --kinds gemv --ms 1,2,4   # retune a part; keeps the other entries

--autotune times every candidate config of each kernel at each (shape, M) and keeps the fastest; it
also records, per (shape, M bucket), which kernel was fastest ("dispatch/..." entries), which
`dispatch.select_kernel` then follows on that GPU.
    python benchmarks/kernels.py --check-only

Timing: every variant runs over a ring of distinct layers whose weights total more than 4x the L2
cache, captured once in a CUDA graph (one launch per layer) and replayed; the per-layer time is
the median replay time over the ring length. The bandwidth floor is the bytes that must move
(int4 weights, fp16 scales, int4 zeros, activations in and out) over a measured copy bandwidth.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from triton_kernels import KernelChoice, PreparedWeight, prepare, select_kernel, w4a16_linear  # noqa: E402
from triton_kernels import configs  # noqa: E402
from triton_kernels.configs import GemmConfig, GemvConfig, WsConfig  # noqa: E402
from triton_kernels.dequant import dequant_matmul  # noqa: E402
from triton_kernels.gemm import gemm  # noqa: E402
from triton_kernels.gemm_swapped import gemm_swapped  # noqa: E402
from triton_kernels.gemv import gemv  # noqa: E402
from triton_kernels.ops import gemm_ws  # noqa: E402  (None where this Triton has no Gluon)
from triton_kernels.testing import RTOL, random_awq_layer, reference_matmul, relative_error  # noqa: E402
from triton_kernels.zero_scale import pack_zero_scales  # noqa: E402

SHAPES = {  # name: (N, K)
    "7b_qkv": (12288, 4096), "7b_o": (4096, 4096), "7b_up_gate": (22016, 4096), "7b_down": (4096, 11008),
    "70b_o": (8192, 8192), "70b_up_gate": (28672, 8192), "70b_down": (8192, 28672),
}
MS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)
GROUP = 128
REPLAYS = 15


# ----------------------------------------------------------------------------------------- correctness
def in_part(index: int, part: tuple[int, int]) -> bool:
    """Work item `index` belongs to part i of n (`--part i/n`: parallel processes share the compiling)."""
    return index % part[1] == part[0]


def check_correctness(part: tuple[int, int] = (0, 1)) -> list[dict]:
    """The tests' comparisons on the real device: every kernel, group size, dtype, ragged M and K."""
    rows = []
    cases = [(1024, 768, 128), (1024, 768, 64), (1024, 768, 32), (1152, 520, -1), (4224, 1032, 128)]
    kernels = {
        "gemv": lambda x, w, b: gemv(x, w, b, GemvConfig(block_n=64, split_k=4, max_m=8)),
        "gemv_subtiles": lambda x, w, b: gemv(x, w, b, GemvConfig(block_n=128, split_k=2, max_m=8, subtiles=2)),
        "gemv_prefetch": lambda x, w, b: gemv(x, w, b, GemvConfig(block_n=64, split_k=3, max_m=8, prefetch=True)),
        "gemv_subtiles_prefetch": lambda x, w, b: gemv(
            x, w, b, GemvConfig(block_n=128, split_k=1, max_m=8, subtiles=2, prefetch=True)),
        "gemv_pipelined": lambda x, w, b: gemv(x, w, b, GemvConfig(block_n=64, split_k=2, max_m=8, loop_stages=3)),
        "gemv_subtiles_prefetch_pipelined": lambda x, w, b: gemv(
            x, w, b, GemvConfig(block_n=128, split_k=1, max_m=8, subtiles=2, prefetch=True, loop_stages=2)),
        "gemv_step2_prefetch": lambda x, w, b: gemv(
            x, w, b, GemvConfig(block_n=64, split_k=3, max_m=8, prefetch=True, blocks_per_step=2)),
        "gemv_step4_prefetch_wide": lambda x, w, b: gemv(
            x, w, b, GemvConfig(block_n=128, split_k=2, max_m=8, num_warps=8, prefetch=True, blocks_per_step=4)),
        "gemv_step3": lambda x, w, b: gemv(x, w, b, GemvConfig(block_n=64, split_k=1, max_m=8, blocks_per_step=3)),
        # Packed fp16 products: fp16 with groups of 128 rows or more; elsewhere these run the float32 path.
        "gemv_half2_prefetch": lambda x, w, b: gemv(
            x, w, b, GemvConfig(block_n=128, split_k=4, max_m=8, num_warps=8, prefetch=True, half2=True)),
        "gemv_half2_step2_subtiles": lambda x, w, b: gemv(
            x, w, b, GemvConfig(block_n=128, split_k=3, max_m=8, subtiles=2, blocks_per_step=2, half2=True)),
        # K slices inside a program and a register cap (the shipped M=1 entries use both).
        "gemv_half2_slices_capped": lambda x, w, b: gemv(
            x, w, b, GemvConfig(block_n=64, split_k=1, max_m=8, num_warps=8, subtiles=2, half2=True, k_slices=2,
                                max_registers=64)),
        "gemv_slices4_prefetch": lambda x, w, b: gemv(
            x, w, b, GemvConfig(block_n=32, split_k=2, max_m=8, num_warps=8, prefetch=True, k_slices=4)),
        "gemm": lambda x, w, b: gemm(x, w, b, GemmConfig(block_m=32, block_n=64, split_k=2)),
        "gemm_m16": lambda x, w, b: gemm(x, w, b, GemmConfig(block_m=16, block_n=128, split_k=1, num_warps=8)),
        "gemm_swapped": lambda x, w, b: gemm_swapped(x, w, b, GemmConfig(block_m=32, block_n=64, split_k=2)),
        "gemm_swapped_wide": lambda x, w, b: gemm_swapped(
            x, w, b, GemmConfig(block_m=128, block_n=128, split_k=1, num_warps=8, num_stages=4)),
        "gemm_swapped_m16": lambda x, w, b: gemm_swapped(x, w, b, GemmConfig(block_m=16, block_n=64, split_k=3)),
        # The scale inside the weight operand (`GemmConfig.scale_operand`), on the large-M tiles too.
        "gemm_swapped_scaled": lambda x, w, b: gemm_swapped(
            x, w, b, GemmConfig(block_m=32, block_n=64, split_k=2, scale_operand=True)),
        "gemm_swapped_scaled_wide": lambda x, w, b: gemm_swapped(
            x, w, b, GemmConfig(block_m=64, block_n=256, split_k=1, num_warps=8, num_stages=3, scale_operand=True)),
        # Each block as two depth-64 products (`GemmConfig.split_dot`), split over K as well.
        "gemm_swapped_split_dot": lambda x, w, b: gemm_swapped(
            x, w, b, GemmConfig(block_m=128, block_n=128, split_k=2, num_warps=8, num_stages=3, scale_operand=True,
                                split_dot=True)),
        # The warp-specialised Hopper GEMM (fp16, groups of whole 128-row blocks: the cases it runs on).
        "gemm_ws": lambda x, w, b: gemm_ws.gemm_ws(x, w, b, WsConfig(block_m=256, stages=3)),
        "gemm_ws_persistent": lambda x, w, b: gemm_ws.gemm_ws(x, w, b, WsConfig(block_m=128, stages=4,
                                                                                persistent=True)),
        "gemm_ws_split": lambda x, w, b: gemm_ws.gemm_ws(x, w, b, WsConfig(block_m=64, stages=6, split_k=3)),
        "gemm_ws_split_persistent": lambda x, w, b: gemm_ws.gemm_ws(x, w, b, WsConfig(block_m=32, stages=8,
                                                                                      persistent=True, split_k=4)),
        "gemm_ws_tma_store": lambda x, w, b: gemm_ws.gemm_ws(x, w, b, WsConfig(block_m=128, stages=4, persistent=True,
                                                                                tma_store=True)),
        "gemm_ws_paired": lambda x, w, b: gemm_ws.gemm_ws(x, w, b, WsConfig(block_m=64, stages=6, split_k=3,
                                                                            paired_blocks=True)),
        "gemm_ws_3wg": lambda x, w, b: gemm_ws.gemm_ws(x, w, b, WsConfig(block_m=128, stages=4, persistent=True,
                                                                         tma_store=True, warpgroups=3)),
        "gemm_ws_4wg": lambda x, w, b: gemm_ws.gemm_ws(x, w, b, WsConfig(block_m=64, stages=6, split_k=2,
                                                                         tma_store=True, warpgroups=4)),
        "dequant_cublas": dequant_matmul,
        "dispatched": lambda x, w, b: w4a16_linear(x, w, b),
    }
    work = [(dtype, case) for dtype in (torch.float16, torch.bfloat16) for case in cases]
    for index, (dtype, (k, n, group)) in enumerate(work):
        if in_part(index, part):
            layer = random_awq_layer(k, n, group, dtype, device="cuda", seed=k + n + (group % 97))
            w = prepare(layer.qweight, layer.qzeros, layer.scales, group)
            for m in (1, 3, 8, 17, 100, 300):
                x = torch.randn((m, k), device="cuda").to(dtype)
                bias = torch.randn((n,), device="cuda").to(dtype) if m == 17 else None
                ref = reference_matmul(x, layer, bias)
                for name, fn in kernels.items():
                    if name.startswith("gemv") and m > 8:
                        continue
                    if name.startswith("gemm_ws") and not (gemm_ws is not None and gemm_ws.runs(w, x)):
                        continue
                    y = fn(x, w, bias)
                    err = relative_error(y, ref)
                    ok = bool(y.shape == (m, n) and torch.isfinite(y).all() and err < RTOL)
                    rows.append(dict(kernel=name, dtype=str(dtype), k=k, n=n, group=group, m=m, err=err, ok=ok))
    report_check(rows, part)
    return rows


def report_check(rows: list[dict], part: tuple[int, int] = (0, 1)) -> None:
    bad = [r for r in rows if not r["ok"]]
    print(f"correctness (part {part[0]}/{part[1]}): {len(rows) - len(bad)}/{len(rows)} comparisons under {RTOL}; "
          f"worst error {max((r['err'] for r in rows), default=float('nan')):.2e}")
    if bad:
        for r in bad[:20]:
            print("FAILED", r)
        raise SystemExit(f"GPU correctness check FAILED for {len(bad)} comparisons")


def load_check_parts(folder: Path) -> list[dict]:
    """The rows of `--check-only --part i/n --out folder` runs; every part of the n must be there."""
    parts = sorted(folder.glob("check_part_*_of_*.json"))
    assert parts, f"no check_part_*.json in {folder}"
    n = int(parts[0].stem.rsplit("_", 1)[1])
    assert len(parts) == n, f"{folder} holds {len(parts)} of the {n} check parts"
    rows = [r for p in parts for r in json.loads(p.read_text())]
    report_check(rows)
    return rows


# ----------------------------------------------------------------------------------------- timing
def l2_bytes() -> int:
    return torch.cuda.get_device_properties(0).L2_cache_size


def ring_length(layer_bytes: int) -> int:
    if WARM_ONLY:
        return 1
    return max(2, math.ceil(4 * l2_bytes() / layer_bytes))


WARM_ONLY = False  # --warm-only: run each variant once (compiling it into Triton's disk cache), time nothing


def time_ring(fn, ring: list, x: torch.Tensor, replays: int = REPLAYS) -> float:
    """Median microseconds per layer of `fn(x, layer)` over the ring, replayed from one CUDA graph."""
    if WARM_ONLY:
        fn(x, ring[0])
        return float("nan")
    for layer in ring[:2]:
        fn(x, layer)  # compile / autotune outside the capture
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for layer in ring[:2]:
            fn(x, layer)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for layer in ring:
            fn(x, layer)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / len(ring))
    del graph
    return statistics.median(times)


def copy_bandwidth(device: torch.device | str = "cuda") -> float:
    """Bytes per second of a 1 GiB device-to-device copy, counting bytes read plus written."""
    src = torch.empty(2**30, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * src.numel() / statistics.median(times)


def write_result(path: Path, data: dict, out: Path | None) -> None:
    """Write a result file (JSON) and, with `out`, a copy of it there (the folder a GPU run brings back)."""
    path.write_text(json.dumps(data, indent=1) + "\n")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / path.name).write_text(path.read_text())


def floor_bytes(m: int, n: int, k: int) -> int:
    """int4 weights + fp16 scales + int4 zeros + fp16 activations in and out."""
    groups = k // GROUP
    return n * k // 2 + groups * n * 2 + groups * n // 2 + 2 * m * k + 2 * m * n


def random_prepared(n: int, k: int, dtype=torch.float16, group: int = GROUP) -> PreparedWeight:
    """A layer with random codes in the prepared layout (timing only: distinct memory per layer)."""
    k_pad = -(-k // 128) * 128
    groups = -(-k_pad // group)
    return PreparedWeight(
        qweight=torch.randint(-(2**31), 2**31 - 1, (k_pad // 128, n, 16), dtype=torch.int32, device="cuda"),
        zero_scales=pack_zero_scales(torch.randint(0, 16, (groups, n), dtype=torch.uint8, device="cuda"),
                                     (torch.rand((groups, n), device="cuda") * 0.02 + 0.005).to(dtype)),
        dtype=dtype, group_size=group, in_features=k, out_features=n,
    )


def prepared_bytes(w: PreparedWeight) -> int:
    return sum(t.numel() * t.element_size() for t in (w.qweight, w.zero_scales))


def prepared_ring(n: int, k: int) -> list[PreparedWeight]:
    """Distinct random (N, K) layers holding over 4x the L2 (`ring_length`), for `time_ring`."""
    first = random_prepared(n, k)
    return [first] + [random_prepared(n, k) for _ in range(ring_length(prepared_bytes(first)) - 1)]


def gemlite_ring(n: int, k: int, count: int) -> list | None:
    """GemLite A16W4 (group 128) layers, or None when gemlite is not installed."""
    try:
        from gemlite.helper import A16W4_HQQ_INT
    except Exception as exc:  # noqa: BLE001 - any import failure means: no GemLite column
        print(f"gemlite unavailable: {exc!r}")
        return None
    ring = []
    for _ in range(count):
        w_q = torch.randint(0, 16, (n, k), dtype=torch.uint8, device="cuda")
        scales = (torch.rand((n, k // GROUP), device="cuda") * 0.02 + 0.005).half()
        zeros = torch.randint(0, 16, (n, k // GROUP), device="cuda").half()
        ring.append(A16W4_HQQ_INT(device="cuda", dtype=torch.float16).from_weights(w_q, scales, zeros))
    return ring


# ----------------------------------------------------------------------------------------- diagnosis
@triton.jit
def _stream_words_kernel(qw_ptr, y_ptr, N, blocks_per_split, n_blocks, BLOCK_N: tl.constexpr):
    """Reads the packed words exactly as the GEMV tiles them and grids them, with one XOR per word:
    the time the GEMV would take if its arithmetic were free."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N))[:, None, None]  # (BN, 1, 1)
    offs_j = (tl.arange(0, 4)[:, None] * 4 + tl.arange(0, 4)[None, :])[None, :, :]  # (1, 4, 4)
    acc = tl.zeros((BLOCK_N, 4, 4), dtype=tl.int32)
    b_start = pid_k * blocks_per_split
    for b in range(b_start, tl.minimum(b_start + blocks_per_split, n_blocks)):
        acc ^= tl.load(qw_ptr + (b * N + offs_n) * 16 + offs_j)
    folded = tl.sum(tl.sum(acc, axis=2), axis=1)  # (BN,)
    tl.atomic_xor(y_ptr + pid_n * BLOCK_N + tl.arange(0, BLOCK_N), folded)


def diagnose_gemv(shapes: dict) -> list[dict]:
    """M=1: the tuned GEMV against a kernel that only streams its words with the same tiles and grid."""
    name = torch.cuda.get_device_name(0)
    bw = copy_bandwidth()
    rows = []
    for shape, (n, k) in shapes.items():
        ring = prepared_ring(n, k)
        w0 = ring[0]
        x = torch.randn((1, k), device="cuda", dtype=torch.float16)
        cfg = configs.gemv_config(name, n, k, 1, torch.cuda.get_device_properties(0).multi_processor_count)
        n_blocks = w0.padded_in_features // 128
        per_split = triton.cdiv(n_blocks, max(1, min(cfg.split_k, n_blocks)))
        out = torch.zeros(triton.cdiv(n, cfg.block_n) * cfg.block_n, dtype=torch.int32, device="cuda")
        grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(n_blocks, per_split))

        def stream(xx, ww):
            _stream_words_kernel[grid](ww.qweight, out, n, per_split, n_blocks, BLOCK_N=cfg.block_n,
                                       num_warps=cfg.num_warps)

        row = dict(shape=shape, n=n, k=k, config=configs.as_entry(cfg), floor_us=floor_bytes(1, n, k) / bw * 1e6,
                   gemv_us=time_ring(lambda xx, ww: gemv(xx, ww, None, cfg), ring, x),
                   stream_words_us=time_ring(stream, ring, x))
        rows.append(row)
        print(f"diagnose {shape:12s} floor {row['floor_us']:6.1f} us, words streamed alone {row['stream_words_us']:6.1f} us,"
              f" gemv {row['gemv_us']:6.1f} us  ({cfg})", flush=True)
        del ring, w0
        torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------------------- autotune
# GEMV tiles: (block_n, subtiles, num_warps, k_slices). A warp covers 8 columns (4 threads a column, one
# 16-byte load each, see gemv.py); columns beyond the warps' 8 each repeat per thread, sharing the thread's
# activations; k_slices > 1 spreads the warps left over K slices. The tiles that came within 4% of the best
# on the four 7B shapes at M=1 after the (column, 16 words) tile (results/gemv_pipeline_<gpu>_flat.json),
# plus the 4-column 128-wide tile that won the 22016-wide shapes before it.
GEMV_TILES = ((32, 1, 2, 1), (64, 1, 4, 1), (128, 1, 8, 1), (32, 1, 8, 2), (64, 2, 8, 2), (128, 2, 4, 1))
# GEMV loops: (prefetch, blocks_per_step, max_registers), all with packed fp16 products (half2), which won
# every fp16 entry against the float32 loops (results/autotune_<gpu>_half2.json); bf16 and the interpreter
# run the float32 path of the same config. A cap of 64 registers lets 4 programs of 8 warps share a
# multiprocessor; it won most entries without the prefetch, whose second block of words it would spill
# (results/gemv_pipeline_<gpu>_flat.json). Triton's pipeliner (loop_stages) won no entry since the steps
# came and is no longer tried.
GEMV_LOOPS = ((True, 1, 0), (False, 1, 64), (False, 1, 0), (True, 2, 0), (False, 2, 0), (True, 1, 64))
# The GEMV is tuned, and compared with the GEMM, up to this M. Packed fp16 GEMVs were tuned up to M=8 once
# (results/autotune_<gpu>_half2.json): the GEMM won at M=4 on all seven shapes (by 6-14%) and at M=8 by 1.7-2.5x.
GEMV_MAX_M = 4
# GEMM tiles: (block_n, num_warps); block_m follows M.
GEMM_TILES = ((64, 4), (128, 8), (256, 8))
# GEMM pipeline depths tried at 16-row tiles (`--gemm-stages`): 3 only. Depths 2, 4 and 5 at M = 2..16 were
# never faster than 3 beyond noise, and 4-5 were slower on every shape (results/autotune_<gpu>_gemm_stages.json):
# the small-M GEMM is not short of weight tiles in flight.
GEMM_STAGES = (3,)
# Weight-as-first-operand GEMM tiles: (block_n, num_warps), 64 weight columns a warpgroup; block_m follows M.
# 256 columns on 8 warps (128 a warpgroup) lost every comparison it was in, scaled or not, on 70b_up_gate at
# M = 16..1024 (e.g. M=256: 429.5 against 260.3 us for 128 columns; results/autotune_<gpu>_scaled_explore.json)
GEMM_SWAPPED_TILES = ((64, 4), (128, 8))
GEMM_SWAPPED_STAGES = (3, 4)
# From 128-row M tiles on, 3 stages only: 4 never won there by more than the runs' spread (70b_up_gate
# M=256, 1024) and the (128, block_m) activation stages take most of the shared memory
WIDE_M_STAGES = (3,)
# Where the group's scale enters (`GemmConfig.scale_operand`) and, with it in the operand, whether each block
# is multiplied as two halves (`GemmConfig.split_dot`): all three are tried at every M
SCALE_PLACEMENTS = ((False, False), (True, False), (True, True))
# Warp-specialised GEMM tiles (`gemm_ws.py`, Hopper): block_m -> the ring depths tried. A stage takes
# `gemm_ws.stage_bytes(block_m)`: 256-row tiles fit 3 in shared memory, 128-row ones 5, 64-row ones 9. The 128-row
# ones ran 1.11-1.19x faster persistent, the 256-row ones 0.93-1.05x (results/gemm_ws_variants_<gpu>.json), so
# both are tried. block_m follows M, plus 128 rows from M = 256 on (and 256 from M = 512).
WS_STAGES = {32: (8,), 64: (6, 8), 128: (4, 5), 256: (3,)}
# With `WsConfig.tma_store` the two (block_m, 64) fp16 y tiles take what one ring stage did (`gemm_ws.shared_bytes`)
WS_TMA_STAGES = {32: (8,), 64: (6, 8), 128: (4,), 256: (2,)}
# K splits tried, of every tile or (`WsConfig.split_tail`) of those past the last whole wave, while the split pieces
# fill under WS_MAX_WAVES waves of programs, each split at least 2 blocks
WS_SPLITS = (1, 2, 3, 4, 6, 8)
WS_MAX_WAVES = 4
WS_MIN_M = 32  # tuned and timed from this M (below it the swapped GEMM's 16-row tiles fit M better)
# Paired blocks (`WsConfig.paired_blocks`) are tried on tiles of up to this many rows: on 64-row tiles they took
# 2-10% less than one block an iteration, on 128-row ones within +-2% (results/gemm_ws_experiments_<gpu>.json)
WS_PAIRED_MAX_BLOCK_M = 64
# MMA warpgroups tried (`WsConfig.warpgroups`), each on tiles of up to `gemm_ws.MAX_BLOCK_M` rows
WARPGROUP_CHOICES = (2, 3, 4)
WS_WARPGROUPS = WARPGROUP_CHOICES
# Warpgroups on a 64-column part each, and on K slices of one 64-column tile (`WsConfig.slice_k`, tiles of up to
# `gemm_ws.max_block_m` rows)
SLICE_K_CHOICES = (False, True)
WS_SLICE_K = SLICE_K_CHOICES
# K cut across programs: by tile (WS_SPLITS, `split_tail`) or by stream-K's equal runs (`WsConfig.stream_k`, tried
# where the tiles leave a partial wave)
STREAM_K_CHOICES = (False, True)
WS_STREAM_K = STREAM_K_CHOICES
# The swapped GEMM is tuned and timed up to this M (it covers M > 256 in tiles of up to 256 rows)
SWAPPED_MAX_M = 4096
SMS = 132  # H100 SXM multiprocessors: the candidate filters aim at 1 to 16 waves of programs


def gemv_candidates(m: int, n: int, k: int) -> list[GemvConfig]:
    blocks = -(-k // 128)
    out = []
    for block_n, subtiles, warps, slices in GEMV_TILES:
        for split in (1, 2, 4, 8, 16):
            programs = -(-n // block_n) * split
            if split <= blocks and (split == 1 or programs <= SMS * 16):
                for prefetch, step, max_registers in GEMV_LOOPS:
                    if step * slices <= -(-blocks // split):  # an iteration longer than the split only adds empty loads
                        out.append(GemvConfig(block_n=block_n, split_k=split, num_warps=warps, num_stages=2, max_m=8,
                                              subtiles=subtiles, prefetch=prefetch, blocks_per_step=step, half2=True,
                                              k_slices=slices, max_registers=max_registers))
    return out


def gemm_candidates(m: int, n: int, k: int) -> list[GemmConfig]:
    blocks = -(-k // 128)
    out = []
    for block_m in sorted({min(max(16, configs.bucket_m(m)), 128), min(max(16, configs.bucket_m(m) // 2), 128)}):
        for block_n, warps in GEMM_TILES:
            tiles = -(-m // block_m) * -(-n // block_n)
            for split in (1, 2, 4, 8):
                if split <= blocks // 2 and (split == 1 or tiles * split <= SMS * 8):
                    for stages in GEMM_STAGES if block_m <= 16 else (3,):
                        out.append(GemmConfig(block_m=block_m, block_n=block_n, split_k=split, num_warps=warps,
                                              num_stages=stages))
    return out


def gemm_swapped_candidates(m: int, n: int, k: int) -> list[GemmConfig]:
    """M is the MMA's N side here (8..256), so a tile covers up to 256 rows of M; from M = 512 on, tiles of
    128 and 256 rows."""
    blocks = -(-k // 128)
    bucket = configs.bucket_m(m)
    block_ms = {min(max(16, bucket), 256), min(max(16, bucket // 2), 256)} | ({128} if bucket >= 512 else set())
    out = []
    for block_m in sorted(block_ms):
        for block_n, warps in GEMM_SWAPPED_TILES:
            if block_m * block_n // (32 * warps) > 128:
                continue  # the float32 accumulator alone would take over 128 registers a thread
            tiles = -(-m // block_m) * -(-n // block_n)
            for split in (1, 2, 4, 8):
                if split <= blocks // 2 and (split == 1 or tiles * split <= SMS * 8):
                    for stages in GEMM_SWAPPED_STAGES if block_m <= 64 else WIDE_M_STAGES:
                        for scale_operand, split_dot in SCALE_PLACEMENTS:
                            out.append(GemmConfig(block_m=block_m, block_n=block_n, split_k=split, num_warps=warps,
                                                  num_stages=stages, scale_operand=scale_operand,
                                                  split_dot=split_dot))
    return out


def gemm_ws_candidates(m: int, n: int, k: int) -> list[WsConfig]:
    """WS_STAGES x persistent or not x WS_SPLITS of every tile or of the last partial wave's (x paired blocks or not on
    small tiles) x WS_WARPGROUPS, from WS_MIN_M to SWAPPED_MAX_M, on a Hopper GPU with a Triton that has Gluon."""
    if gemm_ws is None or torch.cuda.get_device_capability(0)[0] != 9 or not WS_MIN_M <= m <= SWAPPED_MAX_M:
        return []
    bucket = configs.bucket_m(m)
    block_ms = {min(max(32, bucket), 256)} | ({128} if bucket >= 256 else set())
    blocks = -(-k // 128)
    out = []
    for warpgroups, slice_k in ((w, s) for w in WS_WARPGROUPS for s in WS_SLICE_K):
        for block_m in sorted(b for b in block_ms if b <= gemm_ws.max_block_m(warpgroups, slice_k)):
            tiles = -(-m // block_m) * -(-n // WsConfig(block_m, warpgroups=warpgroups, slice_k=slice_k).block_n)
            tail_tiles = tiles % SMS if tiles > SMS else 0  # tiles past the last whole wave (`WsConfig.split_tail`)
            cuts = [(split, split_tail, False) for split in WS_SPLITS if False in WS_STREAM_K
                    for split_tail in ((False, True) if split > 1 else (False,))
                    if split == 1 or (split <= blocks // 2
                                      and 0 < (tail_tiles if split_tail else tiles) * split <= WS_MAX_WAVES * SMS)]
            cuts += [(1, False, True)] if True in WS_STREAM_K and tiles % SMS else []
            pairings = (False, True) if block_m <= WS_PAIRED_MAX_BLOCK_M else (False,)
            out += [WsConfig(block_m=block_m, stages=stages, persistent=persistent, split_k=split,
                             split_tail=split_tail, paired_blocks=paired, tma_store=tma_store, warpgroups=warpgroups,
                             slice_k=slice_k, stream_k=stream_k)
                    for split, split_tail, stream_k in cuts
                    for tma_store in (False, True)
                    for stages in ws_stages(block_m, warpgroups, tma_store, slice_k)
                    for persistent in (False, True) for paired in pairings]
    return out


def ws_stages(block_m: int, warpgroups: int, tma_store: bool, slice_k: bool = False) -> tuple[int, ...]:
    """Ring depths tried: the tables above for 2 warpgroups, else the deepest ring that fits; on K slices (each
    warpgroup reads its own buffers) also the deepest."""
    deepest = gemm_ws.deepest_ring(block_m, warpgroups, tma_store, slice_k)
    if warpgroups == 2:
        table = (WS_TMA_STAGES if tma_store else WS_STAGES)[block_m]
        if slice_k:  # a multiple of the warpgroups (`gemm_ws.check_config`)
            return tuple(sorted({s // 2 * 2 for s in table if s <= deepest} | {deepest}))
        return table
    return (deepest,)


def autotune(out_path: Path | None, kinds: tuple[str, ...], shapes: dict, ms: tuple, part=(0, 1)) -> None:
    """Tune `kinds` at `ms` on `shapes`; entries tuned before for other (kernel, shape, M) are kept.

    A fused kernel that is not being tuned but has an entry for (shape, M) is timed with that entry, so
    that the dispatch entry still compares every kernel. With WARM_ONLY, only the candidates of this
    `part` run, once each (compiling them), and nothing is written."""
    name = torch.cuda.get_device_name(0)
    entries: dict[str, dict] = dict(configs.load_table(name))
    log = []
    table = configs.table_path(name)
    earlier = json.loads(table.read_text()).get("commands", []) if table.exists() else []
    # Entries not retuned now keep theirs: the file lists every command whose entries it still holds.
    meta = {"torch": torch.__version__, "group_size": GROUP, "commands": [*earlier, "python " + " ".join(sys.argv)],
            "note": "written by benchmarks/kernels.py --autotune; fp16 activations, ring-of-layers CUDA-graph timing"}
    work_index = -1
    for shape, (n, k) in shapes.items():
        ring = prepared_ring(n, k)
        for m in ms:
            x = torch.randn((m, k), device="cuda", dtype=torch.float16)
            fastest = {}  # kernel -> microseconds, for the dispatch entry
            if m >= 64 and "dequant_cublas" in kinds and not WARM_ONLY:
                fastest["dequant_cublas"] = time_ring(lambda xx, ww: dequant_matmul(xx, ww, None), ring, x, replays=5)
            for kind, cands, fn, tuned in (
                ("gemv", gemv_candidates(m, n, k) if m <= GEMV_MAX_M else [], gemv, "gemv" in kinds),
                ("gemm", gemm_candidates(m, n, k) if m <= 256 else [], gemm, "gemm" in kinds),
                ("gemm_swapped", gemm_swapped_candidates(m, n, k) if 2 <= m <= SWAPPED_MAX_M else [], gemm_swapped,
                 "gemm_swapped" in kinds),
                ("gemm_ws", gemm_ws_candidates(m, n, k), gemm_ws and gemm_ws.gemm_ws, "gemm_ws" in kinds),
            ):
                entry = entries.get(configs.config_key(kind, n, k, m))
                if not tuned:
                    if cands and entry and not WARM_ONLY:
                        fastest[kind] = time_ring(lambda xx, ww, c=type(cands[0])(**entry), f=fn: f(xx, ww, None, c),
                                                  ring, x, replays=5)
                    continue
                if kind == "gemm_ws" and entry and ((WS_WARPGROUPS, WS_SLICE_K, WS_STREAM_K)
                                                    != (WARPGROUP_CHOICES, SLICE_K_CHOICES, STREAM_K_CHOICES)):
                    cands = [WsConfig(**entry), *cands]  # a subset of the candidates: the entry still competes
                best, tried = None, []
                for cfg in cands:
                    work_index += 1
                    if WARM_ONLY and not in_part(work_index, part):
                        continue
                    try:
                        t = time_ring(lambda xx, ww, c=cfg, f=fn: f(xx, ww, None, c), ring, x, replays=5)
                    except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory: skip the config
                        print(f"skip {kind} {cfg}: {type(exc).__name__}")
                        continue
                    tried.append(dict(configs.as_entry(cfg), us=t))
                    if best is None or t < best[0]:
                        best = (t, cfg)
                if best and not WARM_ONLY:
                    fastest[kind] = best[0]
                    entries[configs.config_key(kind, n, k, m)] = configs.as_entry(best[1])
                    log.append(dict(shape=shape, m=m, kernel=kind, us=best[0], config=configs.as_entry(best[1]),
                                    tried=tried))
                    print(f"{shape:12s} M={m:5d} {kind}: {best[0]:8.1f} us {best[1]}", flush=True)
            log.append(dict(shape=shape, m=m, fastest=fastest))
            if len(fastest) > 1:
                winner = min(fastest, key=fastest.get)
                reason = "measured (us): " + ", ".join(f"{kk} {v:.1f}" for kk, v in sorted(fastest.items(), key=lambda t: t[1]))
                entries[configs.config_key("dispatch", n, k, m)] = dict(kernel=winner, reason=reason)
                print(f"{shape:12s} M={m:5d} dispatch -> {winner}: {reason}", flush=True)
        del ring
        torch.cuda.empty_cache()
        if WARM_ONLY:
            continue
        path = configs.save_table(name, entries, meta)  # after every shape: a run cut short keeps its work
        if out_path:
            out_path.mkdir(parents=True, exist_ok=True)
            (out_path / path.name).write_text(path.read_text())
            (out_path / "autotune_log.json").write_text(json.dumps(log, indent=1))
    if WARM_ONLY:
        print(f"warmed autotune part {part[0]}/{part[1]}")
        return
    print("wrote", path)


# ----------------------------------------------------------------------------------------- benchmark
def benchmark(shapes: dict, ms: tuple, save, part=(0, 1)) -> dict:
    """Time every (shape, M); with WARM_ONLY, run this `part`'s (shape, M) variants once each (compiling)."""
    name = torch.cuda.get_device_name(0)
    cap = torch.cuda.get_device_capability(0)
    bw = float("nan") if WARM_ONLY else copy_bandwidth()
    print(f"{name}: copy bandwidth {bw / 1e12:.2f} TB/s (read + write), L2 {l2_bytes() / 2**20:.0f} MiB", flush=True)
    results = []
    work = [(shape, m) for shape in shapes for m in ms]
    for shape, (n, k) in shapes.items():
        if WARM_ONLY and not any(in_part(work.index((shape, m)), part) for m in ms):
            continue
        ours = prepared_ring(n, k)
        fp16 = [torch.randn((n, k), device="cuda", dtype=torch.float16) for _ in range(ring_length(2 * n * k))]
        try:
            glite = gemlite_ring(n, k, len(ours))
        except Exception as exc:  # noqa: BLE001
            print(f"gemlite failed to build: {exc!r}")
            glite = None
        for m in ms:
            if WARM_ONLY and not in_part(work.index((shape, m)), part):
                continue
            x = torch.randn((m, k), device="cuda", dtype=torch.float16)
            choice = select_kernel(m, n, k, cap, name)
            row = dict(shape=shape, n=n, k=k, m=m, dispatched=choice.value)
            row["fp16_us"] = time_ring(lambda xx, ww: F.linear(xx, ww), fp16, x)
            for kernel in (KernelChoice.GEMV, KernelChoice.GEMM, KernelChoice.GEMM_SWAPPED, KernelChoice.GEMM_WS,
                           KernelChoice.DEQUANT_CUBLAS):
                # The dispatched kernel, plus the alternatives where the choice is close: GEMV vs GEMM up
                # to the GEMV's largest M (M = 1 is the single-query question), GEMM vs dequant+cuBLAS from M = 64.
                alternatives = {KernelChoice.GEMV: m <= GEMV_MAX_M, KernelChoice.GEMM: m <= GEMV_MAX_M or m >= 64,
                                KernelChoice.GEMM_SWAPPED: 2 <= m <= SWAPPED_MAX_M,
                                KernelChoice.GEMM_WS: bool(gemm_ws_candidates(m, n, k)),
                                KernelChoice.DEQUANT_CUBLAS: m >= 64}
                wanted = kernel is choice or alternatives[kernel]
                if not wanted:
                    continue
                row[f"{kernel.value}_us"] = time_ring(lambda xx, ww, kk=kernel: w4a16_linear(xx, ww, kernel=kk), ours, x)
            row["ours_us"] = row[f"{choice.value}_us"]
            if glite is not None:
                try:
                    row["gemlite_us"] = time_ring(lambda xx, ww: ww(xx), glite, x)
                except Exception as exc:  # noqa: BLE001 - record and go on without the column
                    row["gemlite_error"] = repr(exc)[:200]
            row["floor_us"] = floor_bytes(m, n, k) / bw * 1e6
            row["floor_fraction"] = row["floor_us"] / row["ours_us"]
            row["speedup_vs_fp16"] = row["fp16_us"] / row["ours_us"]
            if "gemlite_us" in row:
                row["speedup_vs_gemlite"] = row["gemlite_us"] / row["ours_us"]
            if WARM_ONLY:
                continue
            results.append(row)
            print(format_row(row), flush=True)
            save(dict(gpu=name, capability=list(cap), copy_bandwidth_Bps=bw, l2_bytes=l2_bytes(), rows=results))
        del ours, fp16, glite
        torch.cuda.empty_cache()
    return dict(gpu=name, capability=list(cap), copy_bandwidth_Bps=bw, l2_bytes=l2_bytes(), rows=results)


def format_row(r: dict) -> str:
    cols = [f"{r['shape']:12s}", f"M={r['m']:5d}", f"{r['dispatched']:14s}", f"ours {r['ours_us']:8.1f}",
            f"fp16 {r['fp16_us']:8.1f}", f"gemlite {r.get('gemlite_us', float('nan')):8.1f}",
            f"floor {r['floor_us']:6.1f}", f"x{r['speedup_vs_fp16']:5.2f} fp16",
            f"x{r.get('speedup_vs_gemlite', float('nan')):5.2f} gl", f"{100 * r['floor_fraction']:5.1f}% floor"]
    kinds = ("gemv_us", "gemm_us", "gemm_swapped_us", "gemm_ws_us", "dequant_cublas_us")
    extra = " ".join(f"{k[:-3]}={r[k]:.1f}" for k in kinds if k in r)
    return " ".join(cols) + "  | " + extra


def main() -> None:
    global WARM_ONLY, GEMM_STAGES, WS_WARPGROUPS, WS_SLICE_K, WS_STREAM_K
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autotune", action="store_true", help="tune configs and write triton_kernels/configs/<gpu>.json")
    parser.add_argument("--check-only", action="store_true")
    parser.add_argument("--no-check", action="store_true", help="skip the correctness check (e.g. when tuning)")
    parser.add_argument("--diagnose", action="store_true",
                        help="M=1: time the tuned GEMV against streaming its words alone (what limits it)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of " + ",".join(SHAPES))
    parser.add_argument("--ms", default=",".join(map(str, MS)))
    parser.add_argument("--kinds", default="gemv,gemm,gemm_swapped,gemm_ws,dequant_cublas",
                        help="kernels --autotune tunes or times (others keep their entries)")
    parser.add_argument("--out", type=Path, default=None, help="also copy result files here")
    parser.add_argument("--part", default="0/1", help="i/n: with --check-only or --warm-only, do every n-th item from i")
    parser.add_argument("--warm-only", action="store_true",
                        help="run this part's variants once (fills Triton's disk cache for a later timing run)")
    parser.add_argument("--check-from", type=Path, default=None,
                        help="take the correctness rows from `--check-only --part i/n --out DIR` runs in DIR")
    parser.add_argument("--tag", default="", help="suffix of the result file name: kernels_<gpu>[_<tag>].json")
    parser.add_argument("--gemm-stages", default=",".join(map(str, GEMM_STAGES)),
                        help="comma-separated pipeline depths --autotune tries for 16-row GEMM tiles")
    parser.add_argument("--ws-warpgroups", default=",".join(map(str, WS_WARPGROUPS)),
                        help="MMA warpgroup counts --autotune tries for the warp-specialised GEMM (a subset keeps the "
                             "current entry among the candidates)")
    parser.add_argument("--ws-slice-k", default=",".join(str(int(v)) for v in WS_SLICE_K),
                        help="1: warpgroups on K slices of a tile (WsConfig.slice_k), 0: on columns; --autotune tries "
                             "these (a subset keeps the current entry among the candidates)")
    parser.add_argument("--ws-stream-k", default=",".join(str(int(v)) for v in WS_STREAM_K),
                        help="1: K cut across programs in stream-K's equal runs (WsConfig.stream_k), 0: by tile "
                             "splits; --autotune tries these (a subset keeps the current entry among the candidates)")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    WARM_ONLY = args.warm_only
    GEMM_STAGES = tuple(int(v) for v in args.gemm_stages.split(","))
    WS_WARPGROUPS = tuple(int(v) for v in args.ws_warpgroups.split(","))
    WS_SLICE_K = tuple(bool(int(v)) for v in args.ws_slice_k.split(","))
    WS_STREAM_K = tuple(bool(int(v)) for v in args.ws_stream_k.split(","))
    part = tuple(int(v) for v in args.part.split("/"))
    assert len(part) == 2 and 0 <= part[0] < part[1], f"--part must be i/n with 0 <= i < n, got {args.part}"
    t0 = time.time()
    if args.check_from is not None:
        check = load_check_parts(args.check_from)
    else:
        check = [] if args.no_check or args.warm_only else check_correctness(part)
    if args.check_only:
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"check_part_{part[0]}_of_{part[1]}.json").write_text(json.dumps(check))
        return
    shapes = {s: SHAPES[s] for s in args.shapes.split(",")}
    if args.autotune:
        autotune(args.out, tuple(args.kinds.split(",")), shapes, tuple(int(m) for m in args.ms.split(",")), part)
        return
    if args.warm_only:
        benchmark(shapes, tuple(int(m) for m in args.ms.split(",")), lambda data: None, part)
        print(f"warmed benchmark part {part[0]}/{part[1]}")
        return
    if args.diagnose:
        rows = diagnose_gemv(shapes)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "diagnose_gemv.json").write_text(json.dumps(dict(command="python " + " ".join(sys.argv), rows=rows), indent=1))
        return
    tag = configs.gpu_tag(torch.cuda.get_device_name(0)) + (f"_{args.tag}" if args.tag else "")
    path = Path(__file__).resolve().parent / "results" / f"kernels_{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = dict(command="python " + " ".join(sys.argv), torch=torch.__version__,
                 triton=__import__("triton").__version__, group_size=GROUP,
                 correctness=dict(comparisons=len(check), worst_error=max((r["err"] for r in check), default=None),
                                 rtol=RTOL))

    def save(data: dict) -> None:  # after every row, so a run cut short keeps what it measured
        data = {**extra, **data, "seconds": time.time() - t0}
        path.write_text(json.dumps(data, indent=1) + "\n")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / path.name).write_text(path.read_text())

    data = benchmark(shapes, tuple(int(m) for m in args.ms.split(",")), save)
    print("\n".join(format_row(r) for r in data["rows"]))
    print("wrote", path)


if __name__ == "__main__":
    main()
