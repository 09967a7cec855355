"""Fused int4-dequantize GEMM on the tensor cores (`tl.dot`), split over K for mid-sized M.

Each 128-row block of K is one (BLOCK_N, 16) tile of packed words (a column's 16 words are
contiguous, see `prepare.py`), loaded as its (16, BLOCK_N) transpose; nibble i of the tile is the
(16, BLOCK_N) slab of K rows 16 i .. 16 i + 15. A slab is dequantised in registers to the exact
small integers q - z (one LOP3 and one FADD per weight, `nibbles.py`), rounded to fp16 / bf16
without loss, and fed as the B operand of a depth-16 `tl.dot` against the matching (BLOCK_M, 16)
slice of x. The scale multiplies the float32 partial product once per group and column instead
of every weight.
Pure `tl`: no inline assembly, so the same code runs under `TRITON_INTERPRET=1`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .configs import GemmConfig
from .half2 import interpreting
from .nibbles import FLOAT_2_23_BITS, high_word, q_minus_z
from .prepare import PACK_K, PreparedWeight
from .splitk import merge_unroll, split_buffers, store_partial
from .zero_scale import load_zero_scale, scale_dtype


@triton.jit
def tile_ids(M, BLOCK_M: tl.constexpr):
    """(output tile, its M tile, its N tile, its K split) of this program, for `tiled_launch`'s grid. M tiles
    vary fastest, so the programs that share one weight tile run together and hit L2."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    tiles_m = tl.cdiv(M, BLOCK_M)
    return pid, pid % tiles_m, pid // tiles_m, pid_k


@triton.jit
def _slab_dot(x_ptr, offs_m, mask_m, stride_xm, K, words, high, z, base_bits, b, i: tl.constexpr,
              offs_k, dot_dtype: tl.constexpr):
    """(BM, BN) float32 product of x's 16 columns of slab `i` with that slab's exact q - z."""
    k = b * 128 + 16 * i + offs_k  # (1, 16)
    xs = tl.load(x_ptr + offs_m * stride_xm + k, mask=mask_m & (k < K), other=0.0).to(dot_dtype)  # (BM, 16)
    w = q_minus_z(words, high, z, base_bits, i).to(dot_dtype)  # (16, BN), exact
    return tl.dot(xs, w)


@triton.jit
def gemm_kernel(
    x_ptr, qw_ptr, zs_ptr, bias_ptr, y_ptr, ws_ptr, count_ptr,
    M, N, K, stride_xm, stride_ym, blocks_per_split, split_k, base_bits,
    SCALE_DTYPE: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, MERGE_UNROLL: tl.constexpr, DOT_F32: tl.constexpr,
):
    pid, pid_m, pid_n, pid_k = tile_ids(M, BLOCK_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]  # (BM, 1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]  # (1, BN)
    offs_j = tl.arange(0, 16)[:, None]  # (16, 1): word j of a column
    offs_k = tl.arange(0, 16)[None, :]  # (1, 16): slab columns of x
    mask_m = offs_m < M
    mask_n = offs_n < N
    dot_dtype: tl.constexpr = tl.float32 if DOT_F32 else x_ptr.dtype.element_ty
    n_blocks = tl.cdiv(K, 128)
    b_start = pid_k * blocks_per_split
    b_end = tl.minimum(b_start + blocks_per_split, n_blocks)
    # Groups: one per block (GROUP a multiple of 128), 128 / GROUP per block, or else one per slab.
    GROUPS: tl.constexpr = 1 if GROUP % 128 == 0 else (128 // GROUP if 128 % GROUP == 0 else 8)
    SLABS: tl.constexpr = 8 // GROUPS

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for b in range(b_start, b_end):
        words = tl.load(qw_ptr + (b * N + offs_n) * 16 + offs_j, mask=mask_n, other=0)  # (16, BN)
        high = high_word(words)
        for g in tl.static_range(GROUPS):
            z, s = load_zero_scale(zs_ptr, (b * 128 + 16 * SLABS * g) // GROUP, offs_n, mask_n, N, SCALE_DTYPE)
            part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for i in tl.static_range(g * SLABS, (g + 1) * SLABS):
                part += _slab_dot(x_ptr, offs_m, mask_m, stride_xm, K, words, high, z, base_bits, b, i, offs_k, dot_dtype)
            acc += part * s

    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc += bias * (pid_k == 0).to(tl.float32)
    if SPLIT:
        store_partial(acc, y_ptr, ws_ptr, count_ptr, pid, pid_k, split_k, M, N, offs_m, offs_n, stride_ym,
                      MERGE_UNROLL)
    else:
        tl.store(y_ptr + offs_m * stride_ym + offs_n, acc.to(y_ptr.dtype.element_ty), mask=mask_m & mask_n)


def _interpreter_bf16(x: torch.Tensor) -> bool:
    """Triton's CPU interpreter multiplies bf16 `tl.dot` operands as raw uint16 bits: upcast there."""
    return x.dtype == torch.bfloat16 and interpreting()


@dataclass(frozen=True)
class TiledLaunch:
    """An (M tiles x N tiles, splits of K) grid over whole 128-row blocks, no split left empty."""

    grid: tuple[int, int]
    blocks_per_split: int
    split_k: int
    merge_unroll: int  # split-K partials the last program sums at once (`splitk.merge_unroll`)


def k_splits(n_blocks: int, split_k: int) -> tuple[int, int]:
    """(blocks a split, splits) for `split_k` splits asked of `n_blocks` 128-row blocks: no split left empty."""
    split_k = max(1, min(split_k, n_blocks))
    blocks_per_split = triton.cdiv(n_blocks, split_k)
    return blocks_per_split, triton.cdiv(n_blocks, blocks_per_split)


def tiled_launch(x: torch.Tensor, weight: PreparedWeight, config: GemmConfig) -> TiledLaunch:
    """Check x (M, K) against the weight and lay out the GEMM grid of `config` (shared by both GEMMs)."""
    m, k = x.shape
    assert k == weight.in_features, f"x has K={k}, weight expects {weight.in_features}"
    assert x.dtype == weight.dtype, f"x dtype {x.dtype} != weight dtype {weight.dtype}"
    assert x.stride(1) == 1, "x must be contiguous along K"
    blocks_per_split, split_k = k_splits(weight.padded_in_features // PACK_K, config.split_k)
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(weight.out_features, config.block_n), split_k)
    return TiledLaunch(grid, blocks_per_split, split_k,
                       merge_unroll(config.block_m * config.block_n, 32 * config.num_warps))


def gemm(x: torch.Tensor, weight: PreparedWeight, bias: torch.Tensor | None, config: GemmConfig) -> torch.Tensor:
    """x (M, K) -> (M, N)."""
    m, k = x.shape
    n = weight.out_features
    launch = tiled_launch(x, weight, config)
    grid, blocks_per_split, split_k = launch.grid, launch.blocks_per_split, launch.split_k
    y, workspace, counters = split_buffers(m, n, x, split_k, grid[0])
    gemm_kernel[grid](
        x, weight.qweight, weight.zero_scales, bias if bias is not None else y, y, workspace, counters,
        m, n, k, x.stride(0), y.stride(0), blocks_per_split, split_k, FLOAT_2_23_BITS,
        SCALE_DTYPE=scale_dtype(weight.dtype), GROUP=weight.group_size, BLOCK_M=config.block_m,
        BLOCK_N=config.block_n, HAS_BIAS=bias is not None, SPLIT=split_k > 1, MERGE_UNROLL=launch.merge_unroll,
        DOT_F32=_interpreter_bf16(x),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return y
