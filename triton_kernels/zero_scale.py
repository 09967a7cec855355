"""A group's zero point and scale in one int32 word: bits 0..15 the scale (fp16 or bf16 bits), bits 16..23
the zero point.

Every kernel reads them once per (group, column). As two arrays (uint8 zeros, 16-bit scales) those are
1- and 2-byte loads, too narrow for Triton's asynchronous copies (4 bytes at the least), so the swapped
GEMM's software pipeliner left them as plain loads at the top of each 128-row block, where the
dequantisation waited for them. As one 4-byte word per (group, column), the pipeliner copies them
ahead with the weights (H100, shipped configs: 10-25% less time at M = 16..1024, benchmarks/README.md).
One byte more per group and column than the two arrays: 68 bytes per column and 128-row block instead of 67.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

ZERO_SHIFT = 16  # the zero point's bit position in the word
SCALE_MASK = 0xFFFF

SHIFT = tl.constexpr(ZERO_SHIFT)  # the same two numbers as kernel constants
MASK = tl.constexpr(SCALE_MASK)
_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def pack_zero_scales(zeros: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(G, N) uint8 zero points and (G, N) fp16 / bf16 scales -> (G, N) int32 words."""
    assert zeros.shape == scales.shape, f"zeros {tuple(zeros.shape)} and scales {tuple(scales.shape)} differ"
    assert zeros.dtype == torch.uint8, f"zero points must be uint8, got {zeros.dtype}"
    assert scales.dtype in _TL_DTYPES, f"scales must be fp16 or bf16, got {scales.dtype}"
    scale_bits = scales.contiguous().view(torch.int16).to(torch.int32) & SCALE_MASK  # (G, N)
    return scale_bits | (zeros.to(torch.int32) << ZERO_SHIFT)


def unpack_zero_scales(words: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, N) int32 words -> ((G, N) uint8 zero points, (G, N) scales in `dtype`)."""
    zeros = ((words >> ZERO_SHIFT) & 0xFF).to(torch.uint8)
    scales = (words & SCALE_MASK).to(torch.int16).view(dtype)  # the low 16 bits, reinterpreted
    return zeros, scales


def scale_dtype(dtype: torch.dtype) -> tl.dtype:
    """The kernels' constexpr for a weight's scale dtype."""
    assert dtype in _TL_DTYPES, f"scales must be fp16 or bf16, got {dtype}"
    return _TL_DTYPES[dtype]


@triton.jit
def split_zero_scale(word, SCALE_DTYPE: tl.constexpr):
    """Packed words -> (zero point as int32, scale as float32), elementwise."""
    z = (word >> SHIFT) & 0xFF
    s = (word & MASK).to(tl.int16).to(SCALE_DTYPE, bitcast=True).to(tl.float32)
    return z, s


@triton.jit
def load_zero_scale(zs_ptr, group, offs_n, mask_n, N, SCALE_DTYPE: tl.constexpr):
    """Zero points (int32) and scales (float32) of one group at columns `offs_n`, shaped like `offs_n`."""
    word = tl.load(zs_ptr + group * N + offs_n, mask=mask_n, other=0)
    return split_zero_scale(word, SCALE_DTYPE)
