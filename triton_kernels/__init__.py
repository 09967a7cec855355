"""Fused dequantize-matmul Triton kernels and their dispatch, and decode attention. Knows nothing about models."""
from .decode_attention import NewToken
from .dispatch import DISPATCH_TABLE, KernelChoice, select_kernel
from .fusion import LinearFusion
from .ops import decode_attention, w4a16_linear
from .prepare import PreparedWeight, dequantize_prepared, prepare

__all__ = [
    "DISPATCH_TABLE",
    "KernelChoice",
    "LinearFusion",
    "NewToken",
    "PreparedWeight",
    "decode_attention",
    "dequantize_prepared",
    "prepare",
    "select_kernel",
    "w4a16_linear",
]
