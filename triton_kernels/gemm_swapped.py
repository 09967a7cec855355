"""Fused int4-dequantize GEMM with the weight as the tensor cores' first operand: y^T = W^T x^T.

`gemm.py` multiplies x (BLOCK_M, 16) by the dequantised weight slab (16, BLOCK_N). On Hopper, Triton
feeds the second operand of a warpgroup MMA (wgmma) from shared memory only, so from BLOCK_M = 64,
where it picks wgmma, every dequantised weight is stored to shared memory (2-byte stores) and read
back before the MMA. Here the roles swap: the weight block W^T (BLOCK_N, 128) is the first operand,
which wgmma reads straight from registers, and the activations x^T (128, BLOCK_M) are the second,
copied to shared memory by the pipeliner's asynchronous loads (they are few: BLOCK_M rows). M
becomes the MMA's N dimension, which wgmma allows from 8 to 256, so one kernel covers M from 3
to a few hundred, padded to 16 rows at the least.

For the weight to stay in registers, the whole chain from the loaded words to the fp16 block must be
elementwise or a register renaming (Triton then converts the loaded int32 words to the MMA operand
layout once per 128-row block, and the dequantisation runs in that layout). Hence the float32 bits of
2**23 are a compile-time constant here (a runtime splat stops that conversion from moving up to the
load and sends each slab through shared memory), and the zero point enters as a (BLOCK_N, 1) column.

Per 128-row block: its 16 words a column give 8 slabs (slab i = nibble i = K rows 16 i .. 16 i + 15,
`prepare.py`), dequantised to exact q - z, in fp16 pairs where possible (`half2.slab_pairs`) or else
in float32 (`nibbles.py`); the slabs are joined into one (BLOCK_N, 128) operand and multiplied in one
`tl.dot` (`_join_slabs` says why). Where the group's scale goes is a config choice
(`GemmConfig.scale_operand`, tuned per shape and M):
- on the product (False): the scale multiplies the float32 product of each group once per column, a
  (BLOCK_N, BLOCK_M) multiply-add per block, and Triton waits for each block's MMAs before it. Groups
  smaller than a block fall back to one depth-16 `tl.dot` per slab. Cheapest at small M.
- in the operand (True): each weight enters the MMA as (q - z) * s rounded once to fp16 / bf16 (one more
  HMUL2 a pair, `half2.scaled_slab_pairs`), the value the dequantise kernel writes, and the dot
  accumulates in place. Triton means to keep one block's MMAs in flight while the next block is
  dequantised (a wait with one group pending in the IR; ptxas undoes it, see the split product below),
  and needs fewer registers (sm_90, 128x64 tile: 196 against 230), so 256-row M tiles fit. Every group
  size takes one depth-128 dot, or two depth-64 ones (`GemmConfig.split_dot`).
The float32 paths are pure `tl` and run under `TRITON_INTERPRET=1`.

Split product (`GemmConfig.split_dot`, with the scale in the operand). With the MMAs of one block left in
flight into the next block, ptxas serialises every MMA of the loop (ptxas info C7515: "wgmma.mma_async
instructions are serialized due to non wgmma instructions defining accumulator registers ... between start
and end of the pipeline stage"; the sm_90 SASS then waits for each depth-16 MMA before the next slab is
dequantised). A full wait at the end of each block (`_wait_mmas`, an empty inline asm that reads the
accumulator, so that Triton waits for every MMA before it) lifts that. With a single depth-128 dot the
whole block is then dequantised before its first MMA, which measured slower than the serialised loop
(70b_down M=1024: 941.6 -> 965.3 us, results/split_dot_experiments_<gpu>.json); so the block is
multiplied as two depth-64 dots, slabs 0..3 then 4..7 (`half2.scaled_half_pairs`), and ptxas dequantises
the second half between the first half's MMAs. On the H100 (results/split_dot_<gpu>.json)
that is 1.00-1.37x faster than one product on the 4-warp tiles and on the 8-warp tiles of up to 64
accumulator registers a thread (128x128: 70b_up_gate M=1024 1021.5 -> 798.7 us, against 849.3 for the best
unsplit tile of that run), and 0.90-1.03x on the 8-warp 256x128 and 128x256 tiles (128 accumulator registers
a thread: the kernel then takes 239-255); the tuner picks per entry. Four depth-32 products were not faster
than two (results/split_dot_experiments_<gpu>.json).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import GemmConfig
from .gemm import _interpreter_bf16, tile_ids, tiled_launch
from .half2 import (WEIGHT_SCALE, half2_runs, interpreting, scale_pairs, scaled_half_pairs, scaled_slab_pairs,
                    slab_pairs, zero_pairs)
from .nibbles import FLOAT_2_23_BITS, high_word, q_minus_z
from .prepare import PACK_K, PreparedWeight
from .splitk import split_buffers, store_partial
from .zero_scale import load_zero_scale, scale_dtype

BASE_BITS = tl.constexpr(FLOAT_2_23_BITS)  # a constant, not an argument: see the module docstring
PAIR_SCALE = tl.constexpr(WEIGHT_SCALE)  # `slab_pairs` gives (q - z) / 16


@triton.jit
def _x_rows(x_ptr, k0, ROWS: tl.constexpr, offs_m, mask_m, K, stride_xm, EVEN_K: tl.constexpr):
    """(ROWS, BM) x^T: K rows k0 .. k0 + ROWS - 1 of the BM activation rows (past K: 0)."""
    k = k0 + tl.arange(0, ROWS)[:, None]  # (ROWS, 1)
    return tl.load(x_ptr + offs_m * stride_xm + k, mask=mask_m if EVEN_K else mask_m & (k < K), other=0.0)


@triton.jit
def _slab_float(words, high, z, i: tl.constexpr, dot_dtype: tl.constexpr):
    """Slab i of the words as exact q - z in the MMA's dtype (`nibbles.py`: one LOP3 and one FADD a weight)."""
    return q_minus_z(words, high, z, BASE_BITS, i).to(dot_dtype)  # (BN, 16)


@triton.jit
def _block_float(acc, x_ptr, zs_ptr, SCALE_DTYPE: tl.constexpr, z, s, words, b, offs_m, offs_n, mask_m, mask_n, N, K,
                 stride_xm, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, dot_dtype: tl.constexpr,
                 EVEN_K: tl.constexpr):
    """acc (BN, BM) plus the product of one 128-row block, dequantised in float32 (`nibbles.py`), any group size:
    one depth-128 `tl.dot` where one group covers the block (its z, s given), else one depth-16 `tl.dot` per
    slab (loading each group's z, s)."""
    # Groups: one per block (GROUP a multiple of 128), 128 / GROUP per block, or else one per slab.
    GROUPS: tl.constexpr = 1 if GROUP % 128 == 0 else (128 // GROUP if 128 % GROUP == 0 else 8)
    SLABS: tl.constexpr = 8 // GROUPS
    high = high_word(words)
    if GROUPS == 1:
        w = _join_slabs(_slab_float(words, high, z, 0, dot_dtype), _slab_float(words, high, z, 1, dot_dtype),
                        _slab_float(words, high, z, 2, dot_dtype), _slab_float(words, high, z, 3, dot_dtype),
                        _slab_float(words, high, z, 4, dot_dtype), _slab_float(words, high, z, 5, dot_dtype),
                        _slab_float(words, high, z, 6, dot_dtype), _slab_float(words, high, z, 7, dot_dtype),
                        BLOCK_N)  # (BN, 128)
        xt = _x_rows(x_ptr, b * 128, 128, offs_m, mask_m, K, stride_xm, EVEN_K).to(dot_dtype)  # (128, BM)
        acc += tl.dot(w, xt) * s
    else:
        for g in tl.static_range(GROUPS):
            z, s = load_zero_scale(zs_ptr, (b * 128 + 16 * SLABS * g) // GROUP, offs_n, mask_n, N,
                                   SCALE_DTYPE)  # (BN, 1) each
            part = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
            for i in tl.static_range(g * SLABS, (g + 1) * SLABS):
                xt = _x_rows(x_ptr, b * 128 + 16 * i, 16, offs_m, mask_m, K, stride_xm, EVEN_K)  # (16, BM)
                part = tl.dot(_slab_float(words, high, z, i, dot_dtype), xt.to(dot_dtype), part)
            acc += part * s
    return acc


@triton.jit
def _scaled_slab(words, high, zs_ptr, SCALE_DTYPE: tl.constexpr, z, s, b, i: tl.constexpr, offs_n, mask_n, N,
                 GROUP: tl.constexpr, dot_dtype: tl.constexpr):
    """Slab i of block b as (q - z) * s of its own group, rounded once to the MMA's dtype. z, s: the block's
    group where one covers the block, else slab i's group is loaded here."""
    if GROUP % 128 != 0:
        z, s = load_zero_scale(zs_ptr, (b * 128 + 16 * i) // GROUP, offs_n, mask_n, N, SCALE_DTYPE)  # (BN, 1)
    return (q_minus_z(words, high, z, BASE_BITS, i) * s).to(dot_dtype)  # (BN, 16)


@triton.jit
def _wait_mmas(acc, ASM: tl.constexpr):
    """acc, once every MMA accumulating into it has finished: an empty inline asm that reads it, so Triton puts
    a full MMA wait before it (the split product's end of block, see the module docstring). ASM False (the
    interpreter, which runs no inline asm): acc as it is."""
    if ASM:
        acc = tl.inline_asm_elementwise("// all MMAs of the block done", "=r,0", [acc], dtype=tl.float32,
                                        is_pure=True, pack=1)
    return acc


@triton.jit
def _block_float_scaled(acc, x_ptr, zs_ptr, SCALE_DTYPE: tl.constexpr, z, s, words, b, offs_m, offs_n, mask_m, mask_n,
                        N, K, stride_xm, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, dot_dtype: tl.constexpr,
                        EVEN_K: tl.constexpr, SPLIT_DOT: tl.constexpr, WAIT: tl.constexpr, ASM: tl.constexpr):
    """acc (BN, BM) plus the product of one 128-row block whose weights enter the MMA already scaled, (q - z) * s
    rounded once to the MMA's dtype: one depth-128 `tl.dot` accumulating into acc, any group size (SPLIT_DOT:
    two depth-64 dots, then a full MMA wait; WAIT: a full MMA wait after the one dot, `waits_each_block`)."""
    high = high_word(words)
    if SPLIT_DOT:
        for h in tl.static_range(2):  # slabs 4 h .. 4 h + 3: K rows 64 h .. 64 h + 63 of the block
            w = _join_half(_scaled_slab(words, high, zs_ptr, SCALE_DTYPE, z, s, b, 4 * h, offs_n, mask_n, N, GROUP,
                                        dot_dtype),
                           _scaled_slab(words, high, zs_ptr, SCALE_DTYPE, z, s, b, 4 * h + 1, offs_n, mask_n, N,
                                        GROUP, dot_dtype),
                           _scaled_slab(words, high, zs_ptr, SCALE_DTYPE, z, s, b, 4 * h + 2, offs_n, mask_n, N,
                                        GROUP, dot_dtype),
                           _scaled_slab(words, high, zs_ptr, SCALE_DTYPE, z, s, b, 4 * h + 3, offs_n, mask_n, N,
                                        GROUP, dot_dtype),
                           BLOCK_N)  # (BN, 64)
            xt = _x_rows(x_ptr, b * 128 + 64 * h, 64, offs_m, mask_m, K, stride_xm, EVEN_K).to(dot_dtype)  # (64, BM)
            acc = tl.dot(w, xt, acc)
        return _wait_mmas(acc, ASM)
    w = _join_slabs(_scaled_slab(words, high, zs_ptr, SCALE_DTYPE, z, s, b, 0, offs_n, mask_n, N, GROUP, dot_dtype),
                    _scaled_slab(words, high, zs_ptr, SCALE_DTYPE, z, s, b, 1, offs_n, mask_n, N, GROUP, dot_dtype),
                    _scaled_slab(words, high, zs_ptr, SCALE_DTYPE, z, s, b, 2, offs_n, mask_n, N, GROUP, dot_dtype),
                    _scaled_slab(words, high, zs_ptr, SCALE_DTYPE, z, s, b, 3, offs_n, mask_n, N, GROUP, dot_dtype),
                    _scaled_slab(words, high, zs_ptr, SCALE_DTYPE, z, s, b, 4, offs_n, mask_n, N, GROUP, dot_dtype),
                    _scaled_slab(words, high, zs_ptr, SCALE_DTYPE, z, s, b, 5, offs_n, mask_n, N, GROUP, dot_dtype),
                    _scaled_slab(words, high, zs_ptr, SCALE_DTYPE, z, s, b, 6, offs_n, mask_n, N, GROUP, dot_dtype),
                    _scaled_slab(words, high, zs_ptr, SCALE_DTYPE, z, s, b, 7, offs_n, mask_n, N, GROUP, dot_dtype),
                    BLOCK_N)  # (BN, 128)
    xt = _x_rows(x_ptr, b * 128, 128, offs_m, mask_m, K, stride_xm, EVEN_K).to(dot_dtype)  # (128, BM)
    acc = tl.dot(w, xt, acc)
    if WAIT:
        acc = _wait_mmas(acc, ASM)
    return acc


@triton.jit
def _join_slabs(w0, w1, w2, w3, w4, w5, w6, w7, BLOCK_N: tl.constexpr):
    """Eight (BN, 16) slabs -> the (BN, 128) block, K row 16 i + j = slab i, column j.

    One `tl.dot` over the whole block instead of eight over its slabs: Triton waits for each dot's MMAs
    to finish before the next dot (a wait after each of eight wgmma per block), but issues one dot's MMAs
    back to back. The joins and the reshape only rename registers (no shared memory in the sm_90 SASS)."""
    pairs = tl.join(tl.join(tl.join(w0, w1), tl.join(w2, w3)), tl.join(tl.join(w4, w5), tl.join(w6, w7)))
    # pairs[n, j, a, b, c] = slab 4 c + 2 b + a, column j: put (c, b, a, j) in K order, then flatten
    return tl.reshape(tl.permute(pairs, (0, 4, 3, 2, 1)), (BLOCK_N, 128))


@triton.jit
def _join_half(w0, w1, w2, w3, BLOCK_N: tl.constexpr):
    """Four (BN, 16) slabs -> the (BN, 64) half block they make, K row 16 i + j = slab i, column j (as
    `_join_slabs`)."""
    pairs = tl.join(tl.join(w0, w1), tl.join(w2, w3))  # pairs[n, j, a, b] = slab 2 b + a, column j
    return tl.reshape(tl.permute(pairs, (0, 3, 2, 1)), (BLOCK_N, 64))


@triton.jit
def _block_half2(acc, x_ptr, z, s, words, b, offs_m, mask_m, K, stride_xm, BLOCK_N: tl.constexpr,
                 EVEN_K: tl.constexpr, SCALE_OPERAND: tl.constexpr, SPLIT_DOT: tl.constexpr, WAIT: tl.constexpr):
    """acc (BN, BM) plus the product of one 128-row block (one group), its 8 slabs dequantised in fp16 pairs
    (`half2.slab_pairs`) to (q - z) / 16, exact, and multiplied in one depth-128 `tl.dot`. The scale times 16
    multiplies the float32 product, or (SCALE_OPERAND) the slabs, to fp16 (q - z) * s
    (`half2.scaled_slab_pairs`, one HMUL2 more a pair), and the dot accumulates straight into acc; SPLIT_DOT
    (with SCALE_OPERAND): two depth-64 dots, then a full MMA wait (module docstring); WAIT (with SCALE_OPERAND): a
    full MMA wait after the one dot (`waits_each_block`).
    z (int32) and s (float32): (BN, 1), the block's group."""
    s = s * PAIR_SCALE
    z64, z4 = zero_pairs(z)
    zeros = tl.zeros_like(words)  # the pairs, shaped like the words they are read with
    if SPLIT_DOT:
        scale16 = scale_pairs(s) + zeros
        w0, w1, w2, w3 = scaled_half_pairs(words, z64 + zeros, z4 + zeros, scale16, False)  # (BN, 16) each
        x_low = _x_rows(x_ptr, b * 128, 64, offs_m, mask_m, K, stride_xm, EVEN_K)  # (64, BM)
        acc = tl.dot(_join_half(w0, w1, w2, w3, BLOCK_N), x_low, acc)
        w4, w5, w6, w7 = scaled_half_pairs(words, z64 + zeros, z4 + zeros, scale16, True)  # during those MMAs
        x_high = _x_rows(x_ptr, b * 128 + 64, 64, offs_m, mask_m, K, stride_xm, EVEN_K)  # (64, BM)
        acc = tl.dot(_join_half(w4, w5, w6, w7, BLOCK_N), x_high, acc)
        return _wait_mmas(acc, True)  # inline PTX already: this path never runs in the interpreter
    if SCALE_OPERAND:
        w0, w1, w2, w3, w4, w5, w6, w7 = scaled_slab_pairs(words, z64 + zeros, z4 + zeros, scale_pairs(s) + zeros)
    else:
        w0, w1, w2, w3, w4, w5, w6, w7 = slab_pairs(words, z64 + zeros, z4 + zeros)  # (BN, 16) each
    w = _join_slabs(w0, w1, w2, w3, w4, w5, w6, w7, BLOCK_N)  # (BN, 128): K rows of the block in order
    xt = _x_rows(x_ptr, b * 128, 128, offs_m, mask_m, K, stride_xm, EVEN_K)  # (128, BM)
    if SCALE_OPERAND:
        acc = tl.dot(w, xt, acc)
        if WAIT:
            acc = _wait_mmas(acc, True)  # inline PTX already: this path never runs in the interpreter
    else:
        acc += tl.dot(w, xt) * s  # one depth-128 product: its MMAs issue back to back, one wait a block
    return acc


@triton.jit
def gemm_swapped_kernel(
    x_ptr, qw_ptr, zs_ptr, bias_ptr, y_ptr, ws_ptr, count_ptr,
    M, N, K, stride_xm, stride_ym, blocks_per_split, split_k,
    SCALE_DTYPE: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, MERGE_UNROLL: tl.constexpr, DOT_F32: tl.constexpr,
    HALF2: tl.constexpr, SCALE_OPERAND: tl.constexpr, SPLIT_DOT: tl.constexpr, WAIT: tl.constexpr, ASM: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
):
    pid, pid_m, pid_n, pid_k = tile_ids(M, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)[:, None]  # (BN, 1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)[None, :]  # (1, BM)
    offs_j = tl.arange(0, 16)[None, :]  # (1, 16): word j of a column
    mask_m = offs_m < M
    mask_n = (offs_n < N) | EVEN_N  # EVEN_N: N is a multiple of BLOCK_N, no column is out of range
    dot_dtype: tl.constexpr = tl.float32 if DOT_F32 else x_ptr.dtype.element_ty
    n_blocks = tl.cdiv(K, 128)
    b_start = pid_k * blocks_per_split
    b_end = tl.minimum(b_start + blocks_per_split, n_blocks)

    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # y^T tile
    for b in range(b_start, b_end):
        words = tl.load(qw_ptr + (b * N + offs_n) * 16 + offs_j, mask=mask_n, other=0)  # (BN, 16)
        # One 4-byte word a column: the pipeliner copies it ahead with the words (`zero_scale.py`)
        z, s = load_zero_scale(zs_ptr, (b * 128) // GROUP, offs_n, mask_n, N, SCALE_DTYPE)  # (BN, 1) each
        if HALF2:
            acc = _block_half2(acc, x_ptr, z, s, words, b, offs_m, mask_m, K, stride_xm, BLOCK_N, EVEN_K,
                               SCALE_OPERAND, SPLIT_DOT, WAIT)
        elif SCALE_OPERAND:
            acc = _block_float_scaled(acc, x_ptr, zs_ptr, SCALE_DTYPE, z, s, words, b, offs_m, offs_n, mask_m,
                                      mask_n, N, K, stride_xm, GROUP, BLOCK_N, dot_dtype, EVEN_K, SPLIT_DOT, WAIT,
                                      ASM)
        else:
            acc = _block_float(acc, x_ptr, zs_ptr, SCALE_DTYPE, z, s, words, b, offs_m, offs_n, mask_m, mask_n,
                               N, K, stride_xm, GROUP, BLOCK_M, BLOCK_N, dot_dtype, EVEN_K)

    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)  # (BN, 1)
        acc += bias * (pid_k == 0).to(tl.float32)
    # offs_m (1, BM) and offs_n (BN, 1) address the (BN, BM) tile of y (M, N) transposed
    if SPLIT:
        store_partial(acc, y_ptr, ws_ptr, count_ptr, pid, pid_k, split_k, M, N, offs_m, offs_n, stride_ym,
                      MERGE_UNROLL)
    else:
        tl.store(y_ptr + offs_m * stride_ym + offs_n, acc.to(y_ptr.dtype.element_ty), mask=mask_m & mask_n)


# With the scale in the operand and one dot a block, Triton leaves a block's MMAs in flight while the next block is
# dequantised. Where a warpgroup holds at most this many weight rows (one m64 wgmma a k-step), ptxas serialises
# them (sm_90 SASS: WARPGROUP.DEPBAR.LE gsb0, 0x0 after each HGMMA). Where it holds more, ptxas lets up to seven
# stay in flight (DEPBAR.LE gsb0, 0x7), and the next block's dequantisation can overwrite registers they still read.
# H100 (results/swapped_race_<gpu>.json, 100 runs each of fp16 and bf16 at M = 8, 300, 1000): the 64x256 tile on
# 8 warps gave 14 wrong fp16 results, whole columns off; the 128x256 tile, same SASS, none seen; with a full wait
# after each block none, at 8-12% more time. No tuned or fallback tile holds more than 64 rows a warpgroup (the
# wait would cost the 256x128 tile 6%).
SERIALISED_ROWS_PER_WARPGROUP = 64


def waits_each_block(config: GemmConfig) -> bool:
    """Whether the kernel waits for every MMA at the end of each block on the one-dot scaled path: where a warpgroup
    holds more than SERIALISED_ROWS_PER_WARPGROUP weight rows (the split product always waits)."""
    return (config.scale_operand and not config.split_dot
            and config.block_n // max(1, config.num_warps // 4) > SERIALISED_ROWS_PER_WARPGROUP)


def use_half2(weight: PreparedWeight, x: torch.Tensor) -> bool:
    """Whether the slabs are dequantised in fp16 pairs (`half2.slab_pairs`): wherever they can run."""
    return half2_runs(weight, x)


def gemm_swapped(x: torch.Tensor, weight: PreparedWeight, bias: torch.Tensor | None, config: GemmConfig,
                 half2: bool | None = None) -> torch.Tensor:
    """x (M, K) -> (M, N). `half2` None: the fp16-pair dequantisation wherever it can run (False: float32)."""
    m, k = x.shape
    n = weight.out_features
    assert config.block_m >= 16 and config.block_n >= 16, f"tl.dot needs tiles of at least 16, got {config}"
    assert config.scale_operand or not config.split_dot, f"split_dot needs the scale in the operand, got {config}"
    launch = tiled_launch(x, weight, config)
    grid, blocks_per_split, split_k = launch.grid, launch.blocks_per_split, launch.split_k
    y, workspace, counters = split_buffers(m, n, x, split_k, grid[0])
    gemm_swapped_kernel[grid](
        x, weight.qweight, weight.zero_scales, bias if bias is not None else y, y, workspace, counters,
        m, n, k, x.stride(0), y.stride(0), blocks_per_split, split_k,
        SCALE_DTYPE=scale_dtype(weight.dtype), GROUP=weight.group_size, BLOCK_M=config.block_m,
        BLOCK_N=config.block_n, HAS_BIAS=bias is not None, SPLIT=split_k > 1, MERGE_UNROLL=launch.merge_unroll,
        DOT_F32=_interpreter_bf16(x), HALF2=half2 is not False and use_half2(weight, x),
        SCALE_OPERAND=config.scale_operand, SPLIT_DOT=config.split_dot, WAIT=waits_each_block(config),
        ASM=not interpreting(),
        EVEN_N=n % config.block_n == 0, EVEN_K=k % PACK_K == 0,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return y
