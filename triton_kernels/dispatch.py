"""Which kernel runs a W4A16 linear of a given shape: one function over one named table.

The table's thresholds come from `benchmarks/kernels.py` on an H100 (results in
`benchmarks/results/kernels_<gpu>*.json`); each rule says why it is there.
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

MIN_CAPABILITY = (7, 5)  # Turing: the oldest tensor cores Triton's fp16 `tl.dot` targets


class KernelChoice(enum.Enum):
    GEMV = "gemv"
    GEMM = "gemm"
    DEQUANT_CUBLAS = "dequant_cublas"
    TORCH = "torch"


@dataclass(frozen=True)
class Rule:
    max_m: int  # the rule applies to M <= max_m (first match wins)
    choice: KernelChoice
    reason: str


DISPATCH_TABLE: tuple[Rule, ...] = (
    Rule(2, KernelChoice.GEMV,
         "M<=2: CUDA-core GEMV beat the tensor-core GEMM on 6 of 7 shapes at M=1 and M=2 on the H100 "
         "(e.g. 12288x4096 M=1: 21 us vs 35 us), since GEMM pads M to 16"),
    Rule(128, KernelChoice.GEMM,
         "2<M<=128: GEMV's M FMAs per weight make it ALU-bound from M=4 (12288x4096 M=8: 76 us vs GEMM 30 us); "
         "the fused GEMM reads 4-bit weights once per M tile and beat dequant+cuBLAS up to M=128 on most shapes"),
    Rule(2**62, KernelChoice.DEQUANT_CUBLAS,
         "M>128: compute-bound; the fused loop's in-register dequantisation stalls the tensor cores "
         "(12288x4096 M=256: GEMM 141 us vs dequant+cuBLAS 91 us), so write the fp16 weight once and call cuBLAS"),
)

_notified = False


def _notify_torch_fallback(why: str) -> None:
    global _notified
    if not _notified:
        logger.warning("triton_kernels: %s; using the PyTorch reference (dequantise + matmul)", why)
        _notified = True


def select_kernel(m: int, n: int, k: int, device_capability: tuple[int, int] | None) -> KernelChoice:
    """The kernel for an (M, K) x (K, N) W4A16 product on a device of this capability (None: no CUDA)."""
    assert m >= 1 and n >= 1 and k >= 1, f"bad shape M={m} N={n} K={k}"
    if device_capability is None:
        _notify_torch_fallback("no CUDA device")
        return KernelChoice.TORCH
    if tuple(device_capability) < MIN_CAPABILITY:
        _notify_torch_fallback(f"compute capability {device_capability} < {MIN_CAPABILITY}")
        return KernelChoice.TORCH
    for rule in DISPATCH_TABLE:
        if m <= rule.max_m:
            return rule.choice
    raise AssertionError(f"DISPATCH_TABLE has no rule for M={m}")
