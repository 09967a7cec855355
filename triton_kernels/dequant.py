"""Dequantise a PreparedWeight to a dense (K, N) matrix, for the dequantise-then-cuBLAS path at large M.

At large M the matmul is compute-bound; writing the fp16 weight once (2 bytes per weight) and
handing it to cuBLAS can beat a fused kernel whose tensor-core loop is slowed by the in-register
dequantisation. `dispatch.py` picks this path only where it measured faster.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .nibbles import FLOAT_2_23_BITS, high_word, q_minus_z
from .prepare import PACK_K, PreparedWeight
from .zero_scale import load_zero_scale, scale_dtype


@triton.jit
def dequant_kernel(qw_ptr, zs_ptr, w_ptr, N, K, base_bits, SCALE_DTYPE: tl.constexpr, GROUP: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    b = tl.program_id(0)  # 128-row block of K
    pid_n = tl.program_id(1)
    offs_j = tl.arange(0, 16)[:, None]  # (16, 1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]  # (1, BN)
    mask_n = offs_n < N
    words = tl.load(qw_ptr + (b * N + offs_n) * 16 + offs_j, mask=mask_n, other=0)  # (16, BN)
    high = high_word(words)
    for i in tl.static_range(8):
        k = b * 128 + 16 * i + offs_j  # (16, 1)
        group = (b * 128 + 16 * i) // GROUP
        z, s = load_zero_scale(zs_ptr, group, offs_n, mask_n, N, SCALE_DTYPE)  # (1, BN) each
        w = (q_minus_z(words, high, z, base_bits, i) * s).to(w_ptr.dtype.element_ty)  # exact q - z, scaled
        tl.store(w_ptr + k * N + offs_n, w, mask=mask_n & (k < K))


def dequantize(weight: PreparedWeight, block_n: int = 128) -> torch.Tensor:
    """PreparedWeight -> dense (K, N) weight in its dtype."""
    k, n = weight.in_features, weight.out_features
    w = torch.empty((k, n), device=weight.device, dtype=weight.dtype)
    grid = (weight.padded_in_features // PACK_K, triton.cdiv(n, block_n))
    dequant_kernel[grid](
        weight.qweight, weight.zero_scales, w, n, k, FLOAT_2_23_BITS, SCALE_DTYPE=scale_dtype(weight.dtype),
        GROUP=weight.group_size, BLOCK_N=block_n,
    )
    return w


def dequant_matmul(x: torch.Tensor, weight: PreparedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """x (M, K) -> (M, N) through a dense weight and cuBLAS."""
    w = dequantize(weight)  # (K, N)
    return torch.addmm(bias, x, w) if bias is not None else x @ w
