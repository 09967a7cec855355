"""Fused int4-dequantize GEMV for small M (1 to a few rows), split over K, on CUDA cores.

One program owns BLOCK_N output columns for one slice of K and reads each packed word once:
a (BLOCK_N, 16) tile of words holds 128 consecutive K rows (see `prepare.py`). Nibble i of the
tile is the slab of rows 16*i .. 16*i+15, turned into float32 with the 2**23 magic number
(`(q | 0x4B000000)` read as a float is 2**23 + q) so no integer-to-float conversion is issued,
and mostly without shifts (see `_slab_minus_zero`): about 3 instructions per weight.
Products are accumulated element-wise in a (BLOCK_M, BLOCK_N, 16) register tile and reduced once
at the end. With `fold_zero` (groups of 16..128 rows dividing 128, or multiples of 128) the zero
point leaves the inner loop: sum(x * (q - z)) = sum(x * q) - z * sum(x), the second term once per
group and column, so the loop is AND-OR, FADD, FFMA per weight and holds no zero-point registers;
the scale is applied once per group.
Split-K partial sums are combined with atomic adds into a zero-initialised output.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .splitk import split_output as _output
from .configs import GemvConfig
from .prepare import PACK_K, SLAB_K, PreparedWeight

@triton.jit
def _slab_minus_zero(words, high, z, i: tl.constexpr):
    """Nibble `i` of the words minus the zero point, times 2**shift(i), as exact float32.

    Nibbles 0..4 are masked in place (no shift): OR-ed into the mantissa of 2**23 they give
    2**23 + q * 16**i exactly while q * 16**i < 2**23. Nibbles 5..7 come from `high` = words >> 20.
    The zero point gets the same treatment, so the difference is (q - z) * 16**shift exactly; the
    caller multiplies the activations by 16**-shift (also exact) instead.
    """
    src = words if i < 5 else high
    shift: tl.constexpr = 4 * i if i < 5 else 4 * (i - 5)
    q = ((src & (0xF << shift)) | 0x4B000000).to(tl.float32, bitcast=True)  # 2**23 + q * 16**shift
    zf = ((z << shift) | 0x4B000000).to(tl.float32, bitcast=True)  # 2**23 + z * 16**shift
    return q - zf


@triton.jit
def _slab_q(words, high, i: tl.constexpr):
    """Nibble `i` of the words as exact float32 q * 16**shift(i) (see `_slab_minus_zero`): AND-OR, FADD."""
    src = words if i < 5 else high
    shift: tl.constexpr = 4 * i if i < 5 else 4 * (i - 5)
    return ((src & (0xF << shift)) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0  # minus 2**23


@triton.jit
def _slab_scale(i: tl.constexpr):
    """16**-shift(i): undoes the in-place nibble position of `_slab_q` (exact)."""
    shift: tl.constexpr = 4 * i if i < 5 else 4 * (i - 5)
    return 1.0 / (1 << shift)


@triton.jit
def _x_raw(x_ptr, offs_m, mask_m, stride_xm, k, K):
    """(BM, 1, 16) activations of K rows k as float32."""
    return tl.load(x_ptr + offs_m * stride_xm + k, mask=mask_m & (k < K), other=0.0).to(tl.float32)


@triton.jit
def _x_slab(x_ptr, offs_m, mask_m, stride_xm, k, K, i: tl.constexpr):
    """(BM, 1, 16) activations of K rows k, float32, pre-multiplied by 16**-shift(i)."""
    shift: tl.constexpr = 4 * i if i < 5 else 4 * (i - 5)
    xv = tl.load(x_ptr + offs_m * stride_xm + k, mask=mask_m & (k < K), other=0.0).to(tl.float32)
    return xv * (1.0 / (1 << shift))


@triton.jit
def _load_group(z_ptr, s_ptr, group, offs_n, mask_n, N):
    """Zero point (int32) and scale (float32) rows of one group: each (1, BLOCK_N, 1)."""
    z = tl.load(z_ptr + group * N + offs_n, mask=mask_n, other=0).to(tl.int32)
    s = tl.load(s_ptr + group * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    return z, s


@triton.jit
def gemv_kernel(
    x_ptr, qw_ptr, z_ptr, s_ptr, bias_ptr, y_ptr,
    M, N, K, stride_xm, stride_ym, blocks_per_split,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr, FOLD_ZERO: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)[:, None, None]  # (BM, 1, 1)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N))[None, :, None]  # (1, BN, 1)
    offs_j = tl.arange(0, 16)[None, None, :]  # (1, 1, 16)
    mask_n = offs_n < N
    mask_m = offs_m < M
    n_blocks = tl.cdiv(K, 128)
    b_start = pid_k * blocks_per_split
    b_end = tl.minimum(b_start + blocks_per_split, n_blocks)

    acc = tl.zeros((BLOCK_M, BLOCK_N, 16), dtype=tl.float32)
    for b in range(b_start, b_end):
        words = tl.load(qw_ptr + (b * N + offs_n) * 16 + offs_j, mask=mask_n, other=0)  # (1, BN, 16)
        high = words >> 20  # nibbles 5..7 in bits 0..11
        if FOLD_ZERO and (GROUP % 128 == 0 or 128 % GROUP == 0):
            # Zero point folded out: sum x * q per group, then subtract z * sum(x) once per group.
            SLABS: tl.constexpr = 8 if GROUP % 128 == 0 else GROUP // 16  # slabs per group in a block
            part = tl.zeros((BLOCK_M, BLOCK_N, 16), dtype=tl.float32)
            xs = tl.zeros((BLOCK_M, 1, 16), dtype=tl.float32)
            for i in tl.static_range(8):
                xv = _x_raw(x_ptr, offs_m, mask_m, stride_xm, b * 128 + 16 * i + offs_j, K)  # (BM, 1, 16)
                xs += xv
                part += (xv * _slab_scale(i)) * _slab_q(words, high, i)  # (BM, BN, 16)
                if i % SLABS == SLABS - 1:
                    z, s = _load_group(z_ptr, s_ptr, (b * 128 + 16 * i) // GROUP, offs_n, mask_n, N)
                    acc += (part - z.to(tl.float32) * xs) * s
                    part = tl.zeros((BLOCK_M, BLOCK_N, 16), dtype=tl.float32)
                    xs = tl.zeros((BLOCK_M, 1, 16), dtype=tl.float32)
        elif GROUP % 128 == 0:
            # The whole block is one group: subtract the zero per element, scale once per block.
            z, s = _load_group(z_ptr, s_ptr, (b * 128) // GROUP, offs_n, mask_n, N)
            part = tl.zeros((BLOCK_M, BLOCK_N, 16), dtype=tl.float32)
            for i in tl.static_range(8):
                xv = _x_slab(x_ptr, offs_m, mask_m, stride_xm, b * 128 + 16 * i + offs_j, K, i)  # (BM, 1, 16)
                part += xv * _slab_minus_zero(words, high, z, i)  # (BM, BN, 16)
            acc += part * s
        else:
            for i in tl.static_range(8):
                z, s = _load_group(z_ptr, s_ptr, (b * 128 + 16 * i) // GROUP, offs_n, mask_n, N)
                xv = _x_slab(x_ptr, offs_m, mask_m, stride_xm, b * 128 + 16 * i + offs_j, K, i)  # (BM, 1, 16)
                acc += xv * (_slab_minus_zero(words, high, z, i) * s)  # (BM, BN, 16)

    y = tl.sum(acc, axis=2)  # (BM, BN)
    offs_m2 = tl.arange(0, BLOCK_M)[:, None]  # (BM, 1)
    offs_n2 = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]  # (1, BN)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n2, mask=offs_n2 < N, other=0.0).to(tl.float32)
        y += bias * (pid_k == 0).to(tl.float32)
    y_ptrs = y_ptr + offs_m2 * stride_ym + offs_n2
    mask = (offs_m2 < M) & (offs_n2 < N)
    if ATOMIC:
        tl.atomic_add(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)


def gemv(x: torch.Tensor, weight: PreparedWeight, bias: torch.Tensor | None, config: GemvConfig) -> torch.Tensor:
    """x (M, K) -> (M, N) with M <= config.block_m."""
    m, k = x.shape
    n = weight.out_features
    assert k == weight.in_features, f"x has K={k}, weight expects {weight.in_features}"
    assert x.dtype == weight.dtype, f"x dtype {x.dtype} != weight dtype {weight.dtype}"
    assert x.stride(1) == 1, "x must be contiguous along K"
    block_m = max(triton.next_power_of_2(m), 1)
    assert block_m <= config.max_m, f"GEMV handles M <= {config.max_m}, got M={m}"
    n_blocks = weight.padded_in_features // PACK_K
    split_k = max(1, min(config.split_k, n_blocks))
    blocks_per_split = triton.cdiv(n_blocks, split_k)
    split_k = triton.cdiv(n_blocks, blocks_per_split)  # no empty splits
    atomic = split_k > 1
    y = _output(m, n, x, atomic)
    grid = (triton.cdiv(n, config.block_n), split_k)
    gemv_kernel[grid](
        x, weight.qweight, weight.zeros, weight.scales, bias if bias is not None else y, y,
        m, n, k, x.stride(0), y.stride(0), blocks_per_split,
        GROUP=weight.group_size, BLOCK_M=block_m, BLOCK_N=config.block_n,
        HAS_BIAS=bias is not None, ATOMIC=atomic, FOLD_ZERO=config.fold_zero,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return y.to(x.dtype)


assert SLAB_K == 16 and PACK_K == 128, "kernels hard-code 16-row slabs of 128-row blocks"
