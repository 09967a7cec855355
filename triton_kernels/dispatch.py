"""Which kernel runs a W4A16 linear of a given shape: one function over one named table.

`select_kernel` looks first for a measured choice for this GPU, layer shape and M bucket in the
shipped per-GPU JSON (`configs/<gpu>.json`, "dispatch/..." entries written by
`benchmarks/kernels.py --autotune`: the fastest of the candidate kernels, with its timings as the
reason); failing that, `DISPATCH_TABLE` decides by M alone. The table's thresholds come from the
same benchmark on an H100 (results in `benchmarks/results/kernels_<gpu>*.json`); each rule says
why it is there.
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from . import configs

logger = logging.getLogger(__name__)

MIN_CAPABILITY = (7, 5)  # Turing: the oldest tensor cores Triton's fp16 `tl.dot` targets


class KernelChoice(enum.Enum):
    GEMV = "gemv"
    GEMM = "gemm"
    GEMM_SWAPPED = "gemm_swapped"
    GEMM_WS = "gemm_ws"
    DEQUANT_CUBLAS = "dequant_cublas"
    TORCH = "torch"


@dataclass(frozen=True)
class Rule:
    max_m: int  # the rule applies to M <= max_m (first match wins)
    choice: KernelChoice
    reason: str
    capability_major: int | None = None  # only on GPUs of this compute capability major (None: any)


DISPATCH_TABLE: tuple[Rule, ...] = (
    Rule(2, KernelChoice.GEMV,
         "M<=2: the CUDA-core GEMV (packed fp16 products) beat the tensor-core GEMM (which pads M to 16) on "
         "every benchmark shape on the H100 (M=1: 12288x4096 15.1 vs 23.4 us, 28672x8192 53.3 vs 86.2, "
         "4096x4096 8.0 vs 11.3; M=2: 12288x4096 18.4 vs 23.8)"),
    Rule(256, KernelChoice.GEMM_SWAPPED,
         "2<M<=256: the GEMV's multiply-adds grow with every row of M, so from M=4 a tensor-core GEMM wins; the "
         "one with the weight as the MMA's register operand (`gemm_swapped.py`: slabs dequantised in fp16 pairs, "
         "one depth-128 MMA a block) beat the GEMV, the x-first GEMM and dequant+cuBLAS on the H100 on all 49 "
         "(shape, M=4..256) pairs (12288x4096 M=4: 17.0 vs GEMM 24.3 vs GEMV 25.8 us; M=64: 26.9 vs 52.4 vs "
         "dequant+cuBLAS 84.6; 28672x8192 M=64: 100.0 vs 223.3 vs 383.0; M=256, with the scale inside the weight "
         "operand and 256-row tiles: 256.4 vs 674.1 vs 410.0)"),
    Rule(1024, KernelChoice.GEMM_WS,
         "256<M<=1024 on Hopper: the warp-specialised GEMM (`gemm_ws.py`: a load warp feeding MMA warpgroups "
         "that meet only at the buffers' barriers, so one dequantises while the others' MMAs run) beat the swapped "
         "GEMM at M=1024 on all seven benchmark shapes on the H100 by 1.09-1.34x, at 0.82-0.99x fp16 cuBLAS "
         "(28672x8192: 664.8 vs 893.8 us, fp16 626.5; 8192x28672: 616.1 vs 795.0, fp16 609.3; "
         "results/gemm_ws_variants_<gpu>.json)", capability_major=9),
    Rule(1024, KernelChoice.GEMM_SWAPPED,
         "256<M<=1024 elsewhere: with the group's zero point and scale in one word that the pipeliner copies ahead "
         "and, on the 7B qkv and gate+up shapes, each block in two products (`GemmConfig.split_dot`), the swapped "
         "GEMM (the scale inside the weight operand) beat dequant+cuBLAS at M=1024 on all seven benchmark "
         "shapes on the H100, by 1-8% (28672x8192: 785.5 vs 849.5 us; 22016x4096: 313.8 vs 330.2; 4096x4096: "
         "58.9 vs 59.5), at 0.77-0.79x fp16 cuBLAS"),
    Rule(2048, KernelChoice.GEMM_WS,
         "1024<M<=2048 on Hopper: the warp-specialised GEMM beat dequant+cuBLAS at M=2048 on all seven benchmark "
         "shapes on the H100, by 3-24% (28672x8192: 1472.8 vs 1514.8 us; 4096x11008: 250.8 vs 311.7; "
         "results/autotune_<gpu>_large_m.json)", capability_major=9),
    Rule(2048, KernelChoice.DEQUANT_CUBLAS,
         "1024<M<=2048 elsewhere: as for M>2048 (the swapped GEMM's cost per row stays near 0.77 us on 28672x8192, "
         "dequant+cuBLAS's falls: extrapolated from the H100's M=1024 times they cross near M=1500)"),
    Rule(2**62, KernelChoice.DEQUANT_CUBLAS,
         "M>2048: dequant+cuBLAS writes the fp16 weight once (28672x8192: about 220 us on the H100) and then runs at "
         "cuBLAS's speed, so its cost per row falls with M. At M=4096 on the H100 it beat the warp-specialised GEMM "
         "on six of the seven benchmark shapes, by 2-11% (12288x4096: 594.3 vs 663.7 us; 28672x8192: 2790.9 vs "
         "2901.3), and lost on 8192x28672 (2937.4 vs 2840.3; its measured dispatch entry keeps the fused GEMM), "
         "results/autotune_<gpu>_large_m.json"),
)

_notified = False


def _notify_torch_fallback(why: str) -> None:
    global _notified
    if not _notified:
        logger.warning("triton_kernels: %s; using the PyTorch reference (dequantise + matmul)", why)
        _notified = True


def measured_choice(gpu_name: str | None, n: int, k: int, m: int) -> KernelChoice | None:
    """The kernel measured fastest on this GPU for this shape and M bucket, if the shipped JSON has one."""
    if gpu_name is None:
        return None
    entry = configs.load_table(gpu_name).get(configs.config_key("dispatch", n, k, m))
    return KernelChoice(entry["kernel"]) if entry else None


def select_kernel(
    m: int, n: int, k: int, device_capability: tuple[int, int] | None, gpu_name: str | None = None
) -> KernelChoice:
    """The kernel for an (M, K) x (K, N) W4A16 product on a device of this capability (None: no CUDA).

    `gpu_name` (e.g. "NVIDIA H100 80GB HBM3") enables the measured per-shape choices of that GPU.
    """
    assert m >= 1 and n >= 1 and k >= 1, f"bad shape M={m} N={n} K={k}"
    if device_capability is None:
        _notify_torch_fallback("no CUDA device")
        return KernelChoice.TORCH
    if tuple(device_capability) < MIN_CAPABILITY:
        _notify_torch_fallback(f"compute capability {device_capability} < {MIN_CAPABILITY}")
        return KernelChoice.TORCH
    measured = measured_choice(gpu_name, n, k, m)
    if measured is not None:
        return measured
    for rule in DISPATCH_TABLE:
        if m <= rule.max_m and rule.capability_major in (None, device_capability[0]):
            return rule.choice
    raise AssertionError(f"DISPATCH_TABLE has no rule for M={m}")
