"""Fused int4-dequantize GEMV for small M (1 to a few rows), split over K, on CUDA cores.

One program owns BLOCK_N output columns for one slice of K and reads each packed word once. In
the prepared layout (see `prepare.py`) a column's 16 words of a 128-row block are contiguous and
nibble i of word j is K row 16 i + j. The word tile is (BN, 16), one column's block a row: Triton
then gives 4 threads a column, each loading 4 consecutive words with one 16-byte load, and a warp
8 whole columns (512 contiguous bytes a load instruction); columns beyond a program's warps repeat
per thread. Nibble i of a thread's 4 words is 4 consecutive K rows, whose activations are one
8-byte load, shared by every column the thread holds. (A (BN, 4, 4) tile, used before, let Triton
put a warp's 32 threads on 32 columns, each thread with 2 of a column's 4 word quads: half of
every 32-byte sector a load instruction, and no column sharing a thread's activations. The
(BN, 16) tile took 3-7% less time at M=1 than the best (BN, 4, 4) configs, see
benchmarks/README.md.)

Per weight the float32 path issues one LOP3 (`nibbles.nibble_float`: mask and OR into an exact
float), one FADD (minus the zero point in the same form) and one FFMA per row of x; the scale is
applied once per group to the partial sum. With `GemvConfig.half2` (fp16, groups of whole blocks, on
a GPU) the products run in packed fp16 pairs instead (`half2.py`): half the instructions per weight,
5-13% less time at M=1 on the H100. Products are accumulated element-wise in float32 registers and
reduced once at the end. Split-K partial sums meet in a fixed order (`splitk.store_partial`).

Measured on the H100 (benchmarks/README.md), with the (BN, 4, 4) tile: a launch costs about 7 us
whatever its size (launch, first loads, the split-K epilogue) plus the words streamed at about 74%
of the copy bandwidth; in Nsight Compute the warps wait mostly on global loads, at an occupancy
capped by registers (hence `GemvConfig.max_registers`, which won most M=1 entries at 64). Each
iteration fetches `STEP` whole blocks (`GemvConfig.blocks_per_step`), one tensor per block carried
as a tuple so that every block keeps the single-block register layout (a (STEP, ...) tensor
dimension made Triton pass the zero points through shared memory). Steps of 2 or 4 blocks, without
the register prefetch, gained 11-22% at M=1 on six of the seven benchmark shapes; with the prefetch
their registers cost more occupancy than the prefetch hides. `prefetch` (the next step's loads
issued before this step's arithmetic) and `loop_stages` (Triton's pipeliner: cp.async copies of
later blocks) remain options the tuner tries (no shipped entry uses `loop_stages`; the zero points and
scales, once narrower than 4 bytes and plain loads there, are now one 4-byte word, `zero_scale.py`).
Copying the words by TMA into shared memory and programmatic dependent launch were measured and gained
nothing worth their code.

The epilogue can take in the ops around a decoder layer's products (`fusion.py`: an RMSNorm before,
silu(gate) * up and a residual add after, a copy of the output times the next norm's weight). Split-K
partials are summed first (`splitk.publish` / `arrive` / `gather`, one arrival counter per program
tile), so these see the complete sums. With GLU a program's two subtiles are gate columns and the up
columns N / 2 further on.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import half2
from .configs import GemvConfig
from .fusion import LinearFusion
from .nibbles import FLOAT_2_23_BITS, high_word, q_minus_z
from .prepare import PACK_K, SLAB_K, PreparedWeight
from .splitk import MERGE_UNROLL, arrive, gather, publish, release, split_buffers
from .zero_scale import load_zero_scale, scale_dtype, split_zero_scale


@triton.jit
def _load_x(x_ptr, norm_ptr, rows, stride_xm, k, K, b, b_end, EVEN_K: tl.constexpr, EVEN_STEPS: tl.constexpr,
            SCALE_X: tl.constexpr):
    """(BM, KS, 1, 16) activations of K rows `k` (of blocks `b`) in x's dtype, with SCALE_X times the RMSNorm
    weight of those rows (the row's 1 / rms multiplies the sums at the end, see `_epilogue`); rows past K,
    and with a ragged last step the rows of blocks from `b_end` on, read as 0."""
    if EVEN_K and EVEN_STEPS:
        x = tl.load(x_ptr + rows * stride_xm + k)
        if SCALE_X:
            x = x * tl.load(norm_ptr + k)
        return x
    valid = (k < K) & (k * 0 + b < b_end)  # the block test as a tensor (see `_fetch`)
    x = tl.load(x_ptr + rows * stride_xm + k, mask=valid, other=0.0)
    if SCALE_X:
        x = x * tl.load(norm_ptr + k, mask=valid, other=0.0)
    return x


@triton.jit
def _load_group(zs_ptr, SCALE_DTYPE: tl.constexpr, group, offs_n, mask, N, MASKED: tl.constexpr):
    """(1, KS, SUB, 1) zero points (int32) and scales (float32) of `group`; with MASKED, outside `mask` 0."""
    if MASKED:
        return load_zero_scale(zs_ptr, group, offs_n, mask, N, SCALE_DTYPE)
    return split_zero_scale(tl.load(zs_ptr + group * N + offs_n), SCALE_DTYPE)


@triton.jit
def _fetch(qw_ptr, zs_ptr, SCALE_DTYPE: tl.constexpr, b, b_end, N, offs_n, mask_n, offs_j, GROUP: tl.constexpr,
           MASKED: tl.constexpr):
    """Blocks `b`'s (1, KS, SUB, 16) packed words (each thread's 4 words of a column: one 16-byte load) and
    the (1, KS, SUB, 1) zero point and scale of its first group. With MASKED, columns outside `mask_n`
    and blocks from `b_end` on read as 0; without, every address must be valid."""
    ptrs = qw_ptr + (b * N + offs_n) * 16 + offs_j
    # The block test as a tensor: Triton's CPU interpreter rejects a scalar & tensor mask.
    mask = mask_n & (offs_n * 0 + b < b_end)  # (1, KS, SUB, 1)
    words = tl.load(ptrs, mask=mask, other=0) if MASKED else tl.load(ptrs)
    z, s = _load_group(zs_ptr, SCALE_DTYPE, (b * 128) // GROUP, offs_n, mask, N, MASKED)
    return words, z, s


@triton.jit
def _fetch_step(qw_ptr, zs_ptr, SCALE_DTYPE: tl.constexpr, b, b_end, N, offs_n, mask_n, offs_j,
                GROUP: tl.constexpr, STEP: tl.constexpr, K_SLICES: tl.constexpr, MASKED: tl.constexpr):
    """The (words, zero points, scales) of blocks b + d * K_SLICES, d = 0 .. STEP - 1 (`b` holds each K
    slice's block), a tuple of STEP triples (one tensor per block keeps every block in the layout of a
    single-block tile)."""
    fetched = ()
    for d in tl.static_range(STEP):
        fetched = fetched + (_fetch(qw_ptr, zs_ptr, SCALE_DTYPE, b + d * K_SLICES, b_end, N, offs_n, mask_n, offs_j,
                                    GROUP, MASKED),)
    return fetched


@triton.jit
def _block_product_half2(acc, words, z, s, x_ptr, norm_ptr, rows, stride_xm, b, b_end, K, offs_j,
                         EVEN_K: tl.constexpr, EVEN_STEPS: tl.constexpr, SCALE_X: tl.constexpr):
    """`_block_product` in packed fp16 (`half2.py`), for blocks inside one group: (BM, KS, SUB, 16) sums."""
    xs = ()
    for i in tl.static_range(8):
        xs = xs + (_load_x(x_ptr, norm_ptr, rows, stride_xm, b * 128 + 16 * i + offs_j, K, b, b_end, EVEN_K,
                           EVEN_STEPS, SCALE_X),)
    x0 = half2.pack_pairs(xs[0], xs[4])  # (BM, KS, 1, 16) pairs of rows (16 i + j, 16 (i + 4) + j)
    x1 = half2.pack_pairs(xs[1], xs[5])
    x2 = half2.pack_pairs(xs[2], xs[6])
    x3 = half2.pack_pairs(xs[3], xs[7])
    z64, z4 = half2.zero_pairs(z)  # (1, KS, SUB, 1)
    q0, q1, q2, q3 = half2.dequant_pairs(words, z64, z4)  # (1, KS, SUB, 16) each: (q - z) / 16
    dot = half2.pair_dot(q0, q1, q2, q3, x0, x1, x2, x3)  # (BM, KS, SUB, 16)
    return acc + dot * (s * half2.WEIGHT_SCALE)


@triton.jit
def _block_product(acc, words, z, s, x_ptr, norm_ptr, zs_ptr, SCALE_DTYPE: tl.constexpr, rows, stride_xm, b, b_end,
                   N, K, offs_n, mask_n, offs_j, base_bits, GROUP: tl.constexpr, EVEN_N: tl.constexpr,
                   EVEN_K: tl.constexpr, EVEN_STEPS: tl.constexpr, HALF2: tl.constexpr, SCALE_X: tl.constexpr):
    """acc + x[:, rows of block b] @ (its words dequantised): (BM, K_SLICES, SUB, 16) element-wise sums
    (`b` holds each K slice's block)."""
    if HALF2:
        tl.static_assert(GROUP % 128 == 0, "the packed-fp16 path needs groups of whole 128-row blocks")
        acc = _block_product_half2(acc, words, z, s, x_ptr, norm_ptr, rows, stride_xm, b, b_end, K, offs_j, EVEN_K,
                                   EVEN_STEPS, SCALE_X)
    else:
        # Groups: one per block (GROUP a multiple of 128), 128 / GROUP per block, or else one per slab.
        GROUPS: tl.constexpr = 1 if GROUP % 128 == 0 else (128 // GROUP if 128 % GROUP == 0 else 8)
        SLABS: tl.constexpr = 8 // GROUPS
        high = high_word(words)
        for g in tl.static_range(GROUPS):
            if g > 0:  # columns past N, and blocks past the split in a ragged last step, read as 0
                z, s = _load_group(zs_ptr, SCALE_DTYPE, (b * 128 + 16 * SLABS * g) // GROUP, offs_n,
                                   mask_n & (offs_n * 0 + b < b_end), N, not (EVEN_N and EVEN_STEPS))
            part = tl.zeros_like(acc)
            for i in tl.static_range(g * SLABS, (g + 1) * SLABS):
                xv = _load_x(x_ptr, norm_ptr, rows, stride_xm, b * 128 + 16 * i + offs_j, K, b, b_end, EVEN_K,
                             EVEN_STEPS, SCALE_X)
                part += xv.to(tl.float32) * q_minus_z(words, high, z, base_bits, i)  # (BM, KS, SUB, 16)
            acc += part * s
    return acc


@triton.jit
def _step(b, b_end, acc0, acc1, nxt0, nxt1,
          x_ptr, norm_ptr, qw_ptr, zs_ptr, SCALE_DTYPE: tl.constexpr, rows, stride_xm, N, K, offs_n0, offs_n1,
          mask_n0, mask_n1, offs_j,
          base_bits, GROUP: tl.constexpr, SUBTILES: tl.constexpr, STEP: tl.constexpr,
          K_SLICES: tl.constexpr, PREFETCH: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
          EVEN_STEPS: tl.constexpr, HALF2: tl.constexpr, SCALE_X: tl.constexpr):
    """STEP 128-row blocks from each slice's block `b` (1, KS, 1, 1): their words (prefetched last step,
    or fetched now) times x, added to the accumulators. Returns the accumulators and, with PREFETCH, the
    next step's fetched blocks."""
    if PREFETCH:
        cur0, cur1 = nxt0, nxt1
        b_next = b + STEP * K_SLICES
        nxt0 = _fetch_step(qw_ptr, zs_ptr, SCALE_DTYPE, b_next, b_end, N, offs_n0, mask_n0, offs_j, GROUP, STEP,
                           K_SLICES, True)
        if SUBTILES == 2:
            nxt1 = _fetch_step(qw_ptr, zs_ptr, SCALE_DTYPE, b_next, b_end, N, offs_n1, mask_n1, offs_j, GROUP, STEP,
                               K_SLICES, True)
    else:
        masked: tl.constexpr = not (EVEN_N and EVEN_STEPS)
        cur0 = _fetch_step(qw_ptr, zs_ptr, SCALE_DTYPE, b, b_end, N, offs_n0, mask_n0, offs_j, GROUP, STEP, K_SLICES,
                           masked)
        cur1 = cur0  # unused with one subtile
        if SUBTILES == 2:
            cur1 = _fetch_step(qw_ptr, zs_ptr, SCALE_DTYPE, b, b_end, N, offs_n1, mask_n1, offs_j, GROUP, STEP,
                               K_SLICES, masked)
    for d in tl.static_range(STEP):
        words0, z0, s0 = cur0[d]
        acc0 = _block_product(acc0, words0, z0, s0, x_ptr, norm_ptr, zs_ptr, SCALE_DTYPE, rows, stride_xm,
                              b + d * K_SLICES, b_end, N, K, offs_n0, mask_n0, offs_j, base_bits, GROUP, EVEN_N,
                              EVEN_K, EVEN_STEPS, HALF2, SCALE_X)
        if SUBTILES == 2:
            words1, z1, s1 = cur1[d]
            acc1 = _block_product(acc1, words1, z1, s1, x_ptr, norm_ptr, zs_ptr, SCALE_DTYPE, rows, stride_xm,
                                  b + d * K_SLICES, b_end, N, K, offs_n1, mask_n1, offs_j, base_bits, GROUP, EVEN_N,
                                  EVEN_K, EVEN_STEPS, HALF2, SCALE_X)
    return acc0, acc1, nxt0, nxt1


@triton.jit
def gemv_kernel(
    x_ptr, qw_ptr, zs_ptr, bias_ptr, y_ptr, ws_ptr, count_ptr, norm_ptr, res_ptr, h_ptr, out_w_ptr, y2_ptr,
    M, N, K, stride_xm, stride_ym, stride_rm, stride_hm, blocks_per_split, split_k, base_bits, eps,
    SCALE_DTYPE: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SUBTILES: tl.constexpr, STEP: tl.constexpr, K_SLICES: tl.constexpr, PREFETCH: tl.constexpr,
    LOOP_STAGES: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
    EVEN_STEPS: tl.constexpr, HALF2: tl.constexpr, SCALE_X: tl.constexpr, RMS: tl.constexpr, GLU: tl.constexpr,
    RESIDUAL: tl.constexpr, SCALED_OUT: tl.constexpr, FUSION_LOADS_FIRST: tl.constexpr, RMS_CHUNK: tl.constexpr,
):
    # SUBTILES = 2 splits the BLOCK_N columns into two tiles that share every activation load and
    # conversion: each thread then holds 4 columns instead of 2 (written out as two tiles because one
    # wider tile makes Triton pick a layout that sends the products through shared memory).
    # STEP blocks of 128 rows are fetched per iteration, one tensor per block: a thread's loads in
    # flight grow with STEP (11-22% faster at M=1 with 2 or 4 blocks, see above).
    # K_SLICES > 1 splits the program's K range once more, inside the program: slice s takes blocks
    # b_start + s, b_start + s + K_SLICES, ..., and the slices' sums meet in shared memory at the end,
    # instead of through global memory as split-K programs do (`splitk.py`).
    # PREFETCH issues the next step's loads before this step's arithmetic.
    # LOOP_STAGES > 0 hands the block loop to Triton's software pipeliner (`tl.range(num_stages=)`),
    # which copies the loads of later blocks into shared memory asynchronously (cp.async) ahead of use.
    # SCALE_X, RMS, GLU, RESIDUAL and SCALED_OUT fuse the ops around a decoder layer's products into them
    # (see `_epilogue`); with GLU the two subtiles are SUB gate columns and the SUB up columns N / 2 further on.
    tl.static_assert(SUBTILES == 1 or SUBTILES == 2, "SUBTILES must be 1 or 2")
    tl.static_assert(not GLU or SUBTILES == 2, "GLU pairs gate and up columns as the two subtiles")
    SUB: tl.constexpr = BLOCK_N // SUBTILES
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    # Rows past M re-read row M - 1 (no load predicates); only the store is masked.
    rows = tl.minimum(tl.arange(0, BLOCK_M), M - 1)[:, None, None, None]  # (BM, 1, 1, 1)
    slices = tl.arange(0, K_SLICES)[None, :, None, None]  # (1, KS, 1, 1)
    if GLU:
        col0 = pid_n * SUB  # gate columns in [0, N / 2), their up columns N / 2 further on
        col1 = col0 + N // 2
        end0 = N // 2
    else:
        col0 = pid_n * BLOCK_N
        col1 = col0 + SUB
        end0 = N
    offs_n0 = (col0 + tl.arange(0, SUB))[None, None, :, None]  # (1, 1, SUB, 1)
    offs_n1 = (col1 + tl.arange(0, SUB))[None, None, :, None]
    offs_j = tl.arange(0, 16)[None, None, None, :]  # (1, 1, 1, 16) word j
    mask_n0 = offs_n0 < end0
    mask_n1 = offs_n1 < N
    n_blocks = tl.cdiv(K, 128)
    b_start = pid_k * blocks_per_split
    b_end = tl.minimum(b_start + blocks_per_split, n_blocks)

    acc0 = tl.zeros((BLOCK_M, K_SLICES, SUB, 16), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_M, K_SLICES, SUB, 16), dtype=tl.float32)
    # Without PREFETCH the carried blocks are unused placeholders of the fetched types.
    empty = (tl.zeros((1, K_SLICES, SUB, 16), dtype=tl.int32), tl.zeros((1, K_SLICES, SUB, 1), dtype=tl.int32),
             tl.zeros((1, K_SLICES, SUB, 1), dtype=tl.float32))
    nxt0 = ()
    for d in tl.static_range(STEP):
        nxt0 = nxt0 + (empty,)
    nxt1 = nxt0
    if PREFETCH:
        nxt0 = _fetch_step(qw_ptr, zs_ptr, SCALE_DTYPE, b_start + slices, b_end, N, offs_n0, mask_n0, offs_j, GROUP,
                           STEP, K_SLICES, True)
        if SUBTILES == 2:
            nxt1 = _fetch_step(qw_ptr, zs_ptr, SCALE_DTYPE, b_start + slices, b_end, N, offs_n1, mask_n1, offs_j, GROUP,
                               STEP, K_SLICES, True)
    # The epilogue's own loads (the row's 1 / rms, the residual tile), before the loop or in the epilogue.
    offs_m = tl.arange(0, BLOCK_M)[:, None]  # (BM, 1)
    cols0 = col0 + tl.arange(0, SUB)[None, :]  # (1, SUB)
    cols1 = col1 + tl.arange(0, SUB)[None, :]
    in0 = (offs_m < M) & (cols0 < end0)
    in1 = (offs_m < M) & (cols1 < N)
    r, res0, res1 = _fusion_loads(h_ptr, res_ptr, offs_m, cols0, cols1, in0, in1, M, K, stride_hm, stride_rm, eps,
                                  BLOCK_M, RMS_CHUNK, RMS and FUSION_LOADS_FIRST, RESIDUAL and FUSION_LOADS_FIRST,
                                  GLU, SUBTILES)  # zeros for what the epilogue reads itself
    if LOOP_STAGES > 0:
        for b in tl.range(b_start, b_end, STEP * K_SLICES, num_stages=LOOP_STAGES):
            acc0, acc1, nxt0, nxt1 = _step(
                b + slices, b_end, acc0, acc1, nxt0, nxt1,
                x_ptr, norm_ptr, qw_ptr, zs_ptr, SCALE_DTYPE, rows, stride_xm, N, K, offs_n0, offs_n1, mask_n0,
                mask_n1, offs_j, base_bits, GROUP, SUBTILES, STEP, K_SLICES, PREFETCH, EVEN_N, EVEN_K, EVEN_STEPS,
                HALF2, SCALE_X)
    else:
        for b in range(b_start, b_end, STEP * K_SLICES):
            acc0, acc1, nxt0, nxt1 = _step(
                b + slices, b_end, acc0, acc1, nxt0, nxt1,
                x_ptr, norm_ptr, qw_ptr, zs_ptr, SCALE_DTYPE, rows, stride_xm, N, K, offs_n0, offs_n1, mask_n0,
                mask_n1, offs_j, base_bits, GROUP, SUBTILES, STEP, K_SLICES, PREFETCH, EVEN_N, EVEN_K, EVEN_STEPS,
                HALF2, SCALE_X)

    # The slices' sums meet here (a reduction across warps: shared memory), then the split-K sum.
    y0 = tl.sum(tl.sum(acc0, axis=1), axis=2)  # (BM, SUB) this program's part of the sums
    y1 = tl.sum(tl.sum(acc1, axis=1), axis=2)  # (BM, SUB) (unused with one subtile)
    if SPLIT:
        publish(y0, ws_ptr, pid_k, M, N, offs_m, cols0, in0)
        if SUBTILES == 2:
            publish(y1, ws_ptr, pid_k, M, N, offs_m, cols1, in1)
        if arrive(count_ptr, pid_n) == split_k - 1:  # the tile's last program: every partial is in
            y0 = gather(ws_ptr, split_k, M, N, offs_m, cols0, in0, tl.zeros_like(y0), MERGE_UNROLL)
            if SUBTILES == 2:
                y1 = gather(ws_ptr, split_k, M, N, offs_m, cols1, in1, tl.zeros_like(y1), MERGE_UNROLL)
            _epilogue(y0, y1, r, res0, res1, offs_m, cols0, cols1, in0, in1, end0, h_ptr, bias_ptr, res_ptr, y_ptr,
                      out_w_ptr, y2_ptr, M, N, K, stride_hm, stride_rm, stride_ym, eps, BLOCK_M, SUBTILES, HAS_BIAS,
                      RMS, GLU, RESIDUAL, SCALED_OUT, FUSION_LOADS_FIRST, RMS_CHUNK)
            release(count_ptr, pid_n)
    else:
        _epilogue(y0, y1, r, res0, res1, offs_m, cols0, cols1, in0, in1, end0, h_ptr, bias_ptr, res_ptr, y_ptr,
                  out_w_ptr, y2_ptr, M, N, K, stride_hm, stride_rm, stride_ym, eps, BLOCK_M, SUBTILES, HAS_BIAS,
                  RMS, GLU, RESIDUAL, SCALED_OUT, FUSION_LOADS_FIRST, RMS_CHUNK)


@triton.jit
def _inverse_rms(x_ptr, rows, stride_xm, K, eps, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr):
    """(BM, 1) float32 1 / sqrt(mean(x^2) + eps) over each of x's rows `rows` (BM, 1): the RMSNorm's scale.
    x was written by a kernel before, so the row (a few KB) comes from L2."""
    offs = tl.arange(0, CHUNK)[None, :]  # (1, CHUNK)
    squares = tl.zeros((BLOCK_M, CHUNK), dtype=tl.float32)
    for k0 in range(0, K, CHUNK):
        x = tl.load(x_ptr + rows * stride_xm + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
        squares += x * x
    return 1.0 / tl.sqrt(tl.sum(squares, axis=1, keep_dims=True) / K + eps)


@triton.jit
def _fusion_loads(h_ptr, res_ptr, offs_m, cols0, cols1, in0, in1, M, K, stride_hm, stride_rm, eps,
                  BLOCK_M: tl.constexpr, RMS_CHUNK: tl.constexpr, RMS: tl.constexpr, RESIDUAL: tl.constexpr,
                  GLU: tl.constexpr, SUBTILES: tl.constexpr):
    """What the epilogue reads besides the sums: 1 / rms of the rows of h (RMS, (BM, 1)) and the residual of
    the tile's output columns (RESIDUAL, (BM, SUB) float32 each subtile), zeros where not asked for."""
    r = tl.zeros((BLOCK_M, 1), dtype=tl.float32)
    res0 = tl.zeros((BLOCK_M, cols0.shape[1]), dtype=tl.float32)
    res1 = res0
    if RMS:
        r = _inverse_rms(h_ptr, tl.minimum(offs_m, M - 1), stride_hm, K, eps, BLOCK_M, RMS_CHUNK)
    if RESIDUAL:
        res0 = tl.load(res_ptr + offs_m * stride_rm + cols0, mask=in0, other=0.0).to(tl.float32)
        if SUBTILES == 2 and not GLU:  # with GLU the output has the gate columns only
            res1 = tl.load(res_ptr + offs_m * stride_rm + cols1, mask=in1, other=0.0).to(tl.float32)
    return r, res0, res1


@triton.jit
def _epilogue(y0, y1, r, res0, res1, offs_m, cols0, cols1, in0, in1, end0, h_ptr, bias_ptr, res_ptr, y_ptr,
              out_w_ptr, y2_ptr, M, N, K, stride_hm, stride_rm, stride_ym, eps, BLOCK_M: tl.constexpr,
              SUBTILES: tl.constexpr, HAS_BIAS: tl.constexpr, RMS: tl.constexpr, GLU: tl.constexpr,
              RESIDUAL: tl.constexpr, SCALED_OUT: tl.constexpr, LOADED: tl.constexpr, RMS_CHUNK: tl.constexpr):
    """The tile's complete float32 sums y0 (columns `cols0`, (1, SUB)) and y1 (`cols1`) -> y, in this order:
    times 1 / rms of the row of h (RMS: x is the RMSNorm's weight times h, multiplied as it was read or
    before, so this completes RMSNorm(h) @ W), plus the bias, silu(gate) * up (GLU: y0 the gate, y1 the up
    columns; y is N / 2 wide), plus the residual (RESIDUAL: an (M, N out) tensor, a decoder layer's residual
    stream). With SCALED_OUT also y (as rounded) times `out_w` into y2: the next RMSNorm's weight times its
    input, which the next product then reads as its x. `r`, `res0` and `res1` are `_fusion_loads`' results
    if LOADED (before the loop), else read here."""
    if not LOADED:
        r, res0, res1 = _fusion_loads(h_ptr, res_ptr, offs_m, cols0, cols1, in0, in1, M, K, stride_hm, stride_rm,
                                      eps, BLOCK_M, RMS_CHUNK, RMS, RESIDUAL, GLU, SUBTILES)
    if RMS:
        y0 = y0 * r
        y1 = y1 * r
    if HAS_BIAS:
        y0 += tl.load(bias_ptr + cols0, mask=cols0 < end0, other=0.0).to(tl.float32)
        if SUBTILES == 2:
            y1 += tl.load(bias_ptr + cols1, mask=cols1 < N, other=0.0).to(tl.float32)
    if GLU:
        y0 = y0 * tl.sigmoid(y0) * y1
    if RESIDUAL:
        y0 += res0
        y1 += res1
    out0 = end0 if GLU else N
    _store_out(y0, offs_m, cols0, (offs_m < M) & (cols0 < out0), y_ptr, out_w_ptr, y2_ptr, stride_ym, SCALED_OUT)
    if SUBTILES == 2 and not GLU:
        _store_out(y1, offs_m, cols1, in1, y_ptr, out_w_ptr, y2_ptr, stride_ym, SCALED_OUT)


@triton.jit
def _store_out(y, offs_m, cols, mask, y_ptr, out_w_ptr, y2_ptr, stride_ym, SCALED_OUT: tl.constexpr):
    """y (BM, SUB) float32 rounded into y's columns `cols`; with SCALED_OUT also the rounded y times `out_w`
    there (same strides), in y's dtype, as RMSNorm's weight multiplies its normalised input."""
    rounded = y.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + offs_m * stride_ym + cols, rounded, mask=mask)
    if SCALED_OUT:
        w = tl.load(out_w_ptr + cols, mask=mask, other=0.0)
        tl.store(y2_ptr + offs_m * stride_ym + cols, rounded * w, mask=mask)


def register_cap(config: GemvConfig) -> dict:
    """The launch option that caps registers per thread (`maxnreg`), where the config sets one: fewer
    registers let more programs share a multiprocessor, at the risk of spills."""
    return {"maxnreg": config.max_registers} if config.max_registers else {}


def use_half2(config: GemvConfig, weight: PreparedWeight, x: torch.Tensor) -> bool:
    """Whether the packed-fp16 products (`half2.py`) run: asked for by the config, and possible there."""
    return config.half2 and half2.half2_runs(weight, x)


def gemv(x: torch.Tensor, weight: PreparedWeight, bias: torch.Tensor | None, config: GemvConfig,
         fusion: LinearFusion | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) -> (M, N) in the weight's dtype, with M <= config.max_m. x may also be float32; the kernel
    then converts nothing (it multiplies in float32), which measured no faster on the H100 (benchmarks/README.md).
    `fusion`: the RMSNorm before, silu(gate) * up and residual after the product (`fusion.py`), in its epilogue;
    with its `scaled_output_weight`, (y, y times that weight)."""
    fusion = fusion or LinearFusion()
    m, k = x.shape
    n = weight.out_features
    assert k == weight.in_features, f"x has K={k}, weight expects {weight.in_features}"
    assert x.dtype in (weight.dtype, torch.float32), f"x dtype {x.dtype}: expected {weight.dtype} or float32"
    assert x.stride(1) == 1, "x must be contiguous along K"
    block_m = max(triton.next_power_of_2(m), 1)
    assert block_m <= config.max_m, f"GEMV handles M <= {config.max_m}, got M={m}"
    assert config.loop_stages >= 0, f"loop_stages must be 0 (plain loop) or a pipeline depth, got {config.loop_stages}"
    step = config.blocks_per_step
    assert step >= 1, f"blocks_per_step must be >= 1, got {step}"
    slices = config.k_slices
    assert slices >= 1 and slices & (slices - 1) == 0, f"k_slices must be a power of two, got {slices}"
    n_blocks = weight.padded_in_features // PACK_K
    split_k = max(1, min(config.split_k, n_blocks))
    per_iteration = step * slices  # blocks one loop iteration of a program reads
    blocks_per_split = -(-triton.cdiv(n_blocks, split_k) // per_iteration) * per_iteration  # whole iterations
    split_k = triton.cdiv(n_blocks, blocks_per_split)  # no empty splits
    n_out = fusion.out_features(n)
    # With glu a program's two subtiles are block_n / 2 gate columns and their up columns (same registers).
    subtiles = 2 if fusion.glu else config.subtiles
    columns = config.block_n // subtiles if fusion.glu else config.block_n  # of [0, n_out) a program covers
    grid = (triton.cdiv(n_out, columns), split_k)
    y, workspace, counters = split_buffers(m, n, x, split_k, grid[0], weight.dtype, out_features=n_out)
    norm, residual, out_w = fusion.norm_weight, fusion.residual, fusion.scaled_output_weight
    h = x if norm is not None else fusion.rms_of  # the rows whose 1 / rms multiplies the sums
    if norm is not None:
        assert norm.shape == (k,), f"norm weight of shape {tuple(norm.shape)}, expected ({k},)"
    if h is not None:
        assert h.shape == (m, k) and h.stride(1) == 1, f"rms_of of shape {tuple(h.shape)}, expected ({m}, {k})"
    if residual is not None:
        assert residual.shape == (m, n_out) and residual.stride(1) == 1, (
            f"residual of shape {tuple(residual.shape)} (contiguous rows), expected ({m}, {n_out})")
    y2 = None
    if out_w is not None:
        assert out_w.shape == (n_out,), f"scaled_output_weight of shape {tuple(out_w.shape)}, expected ({n_out},)"
        y2 = torch.empty_like(y)
    gemv_kernel[grid](
        x, weight.qweight, weight.zero_scales, bias if bias is not None else y, y, workspace, counters,
        norm if norm is not None else y, residual if residual is not None else y, h if h is not None else y,
        out_w if out_w is not None else y, y2 if y2 is not None else y,
        m, n, k, x.stride(0), y.stride(0), residual.stride(0) if residual is not None else 0,
        h.stride(0) if h is not None else 0, blocks_per_split, split_k, FLOAT_2_23_BITS, fusion.eps,
        SCALE_DTYPE=scale_dtype(weight.dtype), GROUP=weight.group_size, BLOCK_M=block_m, BLOCK_N=config.block_n,
        SUBTILES=subtiles, STEP=step, K_SLICES=slices, PREFETCH=config.prefetch, LOOP_STAGES=config.loop_stages,
        HAS_BIAS=bias is not None, SPLIT=split_k > 1, EVEN_N=n_out % columns == 0, EVEN_K=k % PACK_K == 0,
        EVEN_STEPS=per_iteration == 1 or n_blocks % blocks_per_split == 0, HALF2=use_half2(config, weight, x),
        SCALE_X=norm is not None, RMS=h is not None, GLU=fusion.glu, RESIDUAL=residual is not None,
        SCALED_OUT=y2 is not None, FUSION_LOADS_FIRST=config.fusion_loads_first,
        RMS_CHUNK=min(config.rms_chunk, triton.next_power_of_2(k)),
        num_warps=config.num_warps, num_stages=config.num_stages, **register_cap(config),
    )
    return y if y2 is None else (y, y2)


assert SLAB_K == 16 and PACK_K == 128, "kernels hard-code 16-row slabs of 128-row blocks"
