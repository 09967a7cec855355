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
later blocks) remain options the tuner tries; zero points and scales, under 4 bytes a thread, stay
plain loads. Copying the words by TMA into shared memory and programmatic dependent launch were
measured and gained nothing worth their code.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import half2
from .configs import GemvConfig
from .nibbles import FLOAT_2_23_BITS, high_word, nibble_float, zero_float
from .prepare import PACK_K, SLAB_K, PreparedWeight
from .splitk import split_buffers, store_partial


@triton.jit
def _load_x(x_ptr, rows, stride_xm, k, K, b, b_end, EVEN_K: tl.constexpr, EVEN_STEPS: tl.constexpr):
    """(BM, KS, 1, 16) activations of K rows `k` (of blocks `b`) in x's dtype; rows past K, and with a
    ragged last step the rows of blocks from `b_end` on, read as 0."""
    if EVEN_K and EVEN_STEPS:
        return tl.load(x_ptr + rows * stride_xm + k)
    valid = (k < K) & (k * 0 + b < b_end)  # the block test as a tensor (see `_fetch`)
    return tl.load(x_ptr + rows * stride_xm + k, mask=valid, other=0.0)


@triton.jit
def _minus_zero(words, high, z, base_bits, i: tl.constexpr):
    """Nibble slab `i` of the words as exact float32 q - z."""
    return nibble_float(words, high, base_bits, i) - zero_float(z, base_bits, i)


@triton.jit
def _load_group(z_ptr, s_ptr, group, offs_n, mask, N, MASKED: tl.constexpr):
    """(1, KS, SUB, 1) zero points (int32) and scales (float32) of `group`; with MASKED, outside `mask` 0."""
    if MASKED:
        z = tl.load(z_ptr + group * N + offs_n, mask=mask, other=0).to(tl.int32)
        s = tl.load(s_ptr + group * N + offs_n, mask=mask, other=0.0).to(tl.float32)
    else:
        z = tl.load(z_ptr + group * N + offs_n).to(tl.int32)
        s = tl.load(s_ptr + group * N + offs_n).to(tl.float32)
    return z, s


@triton.jit
def _fetch(qw_ptr, z_ptr, s_ptr, b, b_end, N, offs_n, mask_n, offs_j, GROUP: tl.constexpr, MASKED: tl.constexpr):
    """Blocks `b`'s (1, KS, SUB, 16) packed words (each thread's 4 words of a column: one 16-byte load) and
    the (1, KS, SUB, 1) zero point and scale of its first group. With MASKED, columns outside `mask_n`
    and blocks from `b_end` on read as 0; without, every address must be valid."""
    ptrs = qw_ptr + (b * N + offs_n) * 16 + offs_j
    # The block test as a tensor: Triton's CPU interpreter rejects a scalar & tensor mask.
    mask = mask_n & (offs_n * 0 + b < b_end)  # (1, KS, SUB, 1)
    words = tl.load(ptrs, mask=mask, other=0) if MASKED else tl.load(ptrs)
    z, s = _load_group(z_ptr, s_ptr, (b * 128) // GROUP, offs_n, mask, N, MASKED)
    return words, z, s


@triton.jit
def _fetch_step(qw_ptr, z_ptr, s_ptr, b, b_end, N, offs_n, mask_n, offs_j, GROUP: tl.constexpr,
                STEP: tl.constexpr, K_SLICES: tl.constexpr, MASKED: tl.constexpr):
    """The (words, zero points, scales) of blocks b + d * K_SLICES, d = 0 .. STEP - 1 (`b` holds each K
    slice's block), a tuple of STEP triples (one tensor per block keeps every block in the layout of a
    single-block tile)."""
    fetched = ()
    for d in tl.static_range(STEP):
        fetched = fetched + (_fetch(qw_ptr, z_ptr, s_ptr, b + d * K_SLICES, b_end, N, offs_n, mask_n, offs_j, GROUP,
                                    MASKED),)
    return fetched


@triton.jit
def _block_product_half2(acc, words, z, s, x_ptr, rows, stride_xm, b, b_end, K, offs_j,
                         EVEN_K: tl.constexpr, EVEN_STEPS: tl.constexpr):
    """`_block_product` in packed fp16 (`half2.py`), for blocks inside one group: (BM, KS, SUB, 16) sums."""
    xs = ()
    for i in tl.static_range(8):
        xs = xs + (_load_x(x_ptr, rows, stride_xm, b * 128 + 16 * i + offs_j, K, b, b_end, EVEN_K, EVEN_STEPS),)
    x0 = half2.pack_pairs(xs[0], xs[4])  # (BM, KS, 1, 16) pairs of rows (16 i + j, 16 (i + 4) + j)
    x1 = half2.pack_pairs(xs[1], xs[5])
    x2 = half2.pack_pairs(xs[2], xs[6])
    x3 = half2.pack_pairs(xs[3], xs[7])
    z64, z4 = half2.zero_pairs(z)  # (1, KS, SUB, 1)
    q0, q1, q2, q3 = half2.dequant_pairs(words, z64, z4)  # (1, KS, SUB, 16) each: (q - z) / 16
    dot = half2.pair_dot(q0, q1, q2, q3, x0, x1, x2, x3)  # (BM, KS, SUB, 16)
    return acc + dot * (s * half2.WEIGHT_SCALE)


@triton.jit
def _block_product(acc, words, z, s, x_ptr, z_ptr, s_ptr, rows, stride_xm, b, b_end, N, K, offs_n, mask_n, offs_j,
                   base_bits, GROUP: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
                   EVEN_STEPS: tl.constexpr, HALF2: tl.constexpr):
    """acc + x[:, rows of block b] @ (its words dequantised): (BM, K_SLICES, SUB, 16) element-wise sums
    (`b` holds each K slice's block)."""
    if HALF2:
        tl.static_assert(GROUP % 128 == 0, "the packed-fp16 path needs groups of whole 128-row blocks")
        acc = _block_product_half2(acc, words, z, s, x_ptr, rows, stride_xm, b, b_end, K, offs_j, EVEN_K, EVEN_STEPS)
    else:
        # Groups: one per block (GROUP a multiple of 128), 128 / GROUP per block, or else one per slab.
        GROUPS: tl.constexpr = 1 if GROUP % 128 == 0 else (128 // GROUP if 128 % GROUP == 0 else 8)
        SLABS: tl.constexpr = 8 // GROUPS
        high = high_word(words)
        for g in tl.static_range(GROUPS):
            if g > 0:  # columns past N, and blocks past the split in a ragged last step, read as 0
                z, s = _load_group(z_ptr, s_ptr, (b * 128 + 16 * SLABS * g) // GROUP, offs_n,
                                   mask_n & (offs_n * 0 + b < b_end), N, not (EVEN_N and EVEN_STEPS))
            part = tl.zeros_like(acc)
            for i in tl.static_range(g * SLABS, (g + 1) * SLABS):
                xv = _load_x(x_ptr, rows, stride_xm, b * 128 + 16 * i + offs_j, K, b, b_end, EVEN_K, EVEN_STEPS)
                part += xv.to(tl.float32) * _minus_zero(words, high, z, base_bits, i)  # (BM, KS, SUB, 16)
            acc += part * s
    return acc


@triton.jit
def _step(b, b_end, acc0, acc1, nxt0, nxt1,
          x_ptr, qw_ptr, z_ptr, s_ptr, rows, stride_xm, N, K, offs_n0, offs_n1, mask_n0, mask_n1, offs_j, base_bits,
          GROUP: tl.constexpr, SUBTILES: tl.constexpr, STEP: tl.constexpr,
          K_SLICES: tl.constexpr, PREFETCH: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
          EVEN_STEPS: tl.constexpr, HALF2: tl.constexpr):
    """STEP 128-row blocks from each slice's block `b` (1, KS, 1, 1): their words (prefetched last step,
    or fetched now) times x, added to the accumulators. Returns the accumulators and, with PREFETCH, the
    next step's fetched blocks."""
    if PREFETCH:
        cur0, cur1 = nxt0, nxt1
        b_next = b + STEP * K_SLICES
        nxt0 = _fetch_step(qw_ptr, z_ptr, s_ptr, b_next, b_end, N, offs_n0, mask_n0, offs_j, GROUP, STEP, K_SLICES,
                           True)
        if SUBTILES == 2:
            nxt1 = _fetch_step(qw_ptr, z_ptr, s_ptr, b_next, b_end, N, offs_n1, mask_n1, offs_j, GROUP, STEP, K_SLICES,
                               True)
    else:
        masked: tl.constexpr = not (EVEN_N and EVEN_STEPS)
        cur0 = _fetch_step(qw_ptr, z_ptr, s_ptr, b, b_end, N, offs_n0, mask_n0, offs_j, GROUP, STEP, K_SLICES, masked)
        cur1 = cur0  # unused with one subtile
        if SUBTILES == 2:
            cur1 = _fetch_step(qw_ptr, z_ptr, s_ptr, b, b_end, N, offs_n1, mask_n1, offs_j, GROUP, STEP, K_SLICES,
                               masked)
    for d in tl.static_range(STEP):
        words0, z0, s0 = cur0[d]
        acc0 = _block_product(acc0, words0, z0, s0, x_ptr, z_ptr, s_ptr, rows, stride_xm, b + d * K_SLICES, b_end, N,
                              K, offs_n0, mask_n0, offs_j, base_bits, GROUP, EVEN_N, EVEN_K, EVEN_STEPS, HALF2)
        if SUBTILES == 2:
            words1, z1, s1 = cur1[d]
            acc1 = _block_product(acc1, words1, z1, s1, x_ptr, z_ptr, s_ptr, rows, stride_xm, b + d * K_SLICES, b_end,
                                  N, K, offs_n1, mask_n1, offs_j, base_bits, GROUP, EVEN_N, EVEN_K, EVEN_STEPS,
                                  HALF2)
    return acc0, acc1, nxt0, nxt1


@triton.jit
def gemv_kernel(
    x_ptr, qw_ptr, z_ptr, s_ptr, bias_ptr, y_ptr, ws_ptr, count_ptr,
    M, N, K, stride_xm, stride_ym, blocks_per_split, split_k, base_bits,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUBTILES: tl.constexpr,
    STEP: tl.constexpr, K_SLICES: tl.constexpr, PREFETCH: tl.constexpr, LOOP_STAGES: tl.constexpr,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
    EVEN_STEPS: tl.constexpr, HALF2: tl.constexpr,
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
    tl.static_assert(SUBTILES == 1 or SUBTILES == 2, "SUBTILES must be 1 or 2")
    SUB: tl.constexpr = BLOCK_N // SUBTILES
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    # Rows past M re-read row M - 1 (no load predicates); only the store is masked.
    rows = tl.minimum(tl.arange(0, BLOCK_M), M - 1)[:, None, None, None]  # (BM, 1, 1, 1)
    slices = tl.arange(0, K_SLICES)[None, :, None, None]  # (1, KS, 1, 1)
    offs_n0 = (pid_n * BLOCK_N + tl.arange(0, SUB))[None, None, :, None]  # (1, 1, SUB, 1)
    offs_n1 = offs_n0 + SUB
    offs_j = tl.arange(0, 16)[None, None, None, :]  # (1, 1, 1, 16) word j
    mask_n0 = offs_n0 < N
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
        nxt0 = _fetch_step(qw_ptr, z_ptr, s_ptr, b_start + slices, b_end, N, offs_n0, mask_n0, offs_j, GROUP, STEP,
                           K_SLICES, True)
        if SUBTILES == 2:
            nxt1 = _fetch_step(qw_ptr, z_ptr, s_ptr, b_start + slices, b_end, N, offs_n1, mask_n1, offs_j, GROUP,
                               STEP, K_SLICES, True)
    if LOOP_STAGES > 0:
        for b in tl.range(b_start, b_end, STEP * K_SLICES, num_stages=LOOP_STAGES):
            acc0, acc1, nxt0, nxt1 = _step(
                b + slices, b_end, acc0, acc1, nxt0, nxt1,
                x_ptr, qw_ptr, z_ptr, s_ptr, rows, stride_xm, N, K, offs_n0, offs_n1, mask_n0, mask_n1, offs_j,
                base_bits, GROUP, SUBTILES, STEP, K_SLICES, PREFETCH, EVEN_N, EVEN_K, EVEN_STEPS, HALF2)
    else:
        for b in range(b_start, b_end, STEP * K_SLICES):
            acc0, acc1, nxt0, nxt1 = _step(
                b + slices, b_end, acc0, acc1, nxt0, nxt1,
                x_ptr, qw_ptr, z_ptr, s_ptr, rows, stride_xm, N, K, offs_n0, offs_n1, mask_n0, mask_n1, offs_j,
                base_bits, GROUP, SUBTILES, STEP, K_SLICES, PREFETCH, EVEN_N, EVEN_K, EVEN_STEPS, HALF2)

    # The slices' sums meet here (a reduction across warps: shared memory), then the split-K epilogue.
    _store(tl.sum(acc0, axis=1), y_ptr, bias_ptr, ws_ptr, count_ptr, SUBTILES * pid_n, pid_k, split_k,
           pid_n * BLOCK_N, M, N, stride_ym, BLOCK_M, SUB, HAS_BIAS, SPLIT)
    if SUBTILES == 2:
        _store(tl.sum(acc1, axis=1), y_ptr, bias_ptr, ws_ptr, count_ptr, 2 * pid_n + 1, pid_k, split_k,
               pid_n * BLOCK_N + SUB, M, N, stride_ym, BLOCK_M, SUB, HAS_BIAS, SPLIT)


@triton.jit
def _store(acc, y_ptr, bias_ptr, ws_ptr, count_ptr, tile, pid_k, split_k, n0, M, N, stride_ym,
           BLOCK_M: tl.constexpr, SUB: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr):
    """Reduce the (BM, SUB, 16) element-wise sums and write columns n0 .. n0 + SUB (with SPLIT, this
    split's partial, summed with the others by the tile's last program)."""
    y = tl.sum(acc, axis=2)  # (BM, SUB)
    offs_m = tl.arange(0, BLOCK_M)[:, None]  # (BM, 1)
    offs_n = n0 + tl.arange(0, SUB)[None, :]  # (1, SUB)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        y += bias * (pid_k == 0).to(tl.float32)
    if SPLIT:
        store_partial(y, y_ptr, ws_ptr, count_ptr, tile, pid_k, split_k, M, N, offs_m, offs_n, stride_ym)
    else:
        tl.store(y_ptr + offs_m * stride_ym + offs_n, y.to(y_ptr.dtype.element_ty), mask=(offs_m < M) & (offs_n < N))


def register_cap(config: GemvConfig) -> dict:
    """The launch option that caps registers per thread (`maxnreg`), where the config sets one: fewer
    registers let more programs share a multiprocessor, at the risk of spills."""
    return {"maxnreg": config.max_registers} if config.max_registers else {}


def use_half2(config: GemvConfig, weight: PreparedWeight, x: torch.Tensor) -> bool:
    """Whether the packed-fp16 products (`half2.py`) run: asked for by the config, and possible there."""
    return config.half2 and half2.half2_runs(weight, x)


def gemv(x: torch.Tensor, weight: PreparedWeight, bias: torch.Tensor | None, config: GemvConfig) -> torch.Tensor:
    """x (M, K) -> (M, N) in the weight's dtype, with M <= config.max_m. x may also be float32; the kernel
    then converts nothing (it multiplies in float32), which measured no faster on the H100 (benchmarks/README.md)."""
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
    grid = (triton.cdiv(n, config.block_n), split_k)
    y, workspace, counters = split_buffers(m, n, x, split_k, grid[0] * config.subtiles, weight.dtype)
    gemv_kernel[grid](
        x, weight.qweight, weight.zeros, weight.scales, bias if bias is not None else y, y, workspace, counters,
        m, n, k, x.stride(0), y.stride(0), blocks_per_split, split_k, FLOAT_2_23_BITS,
        GROUP=weight.group_size, BLOCK_M=block_m, BLOCK_N=config.block_n, SUBTILES=config.subtiles, STEP=step,
        K_SLICES=slices, PREFETCH=config.prefetch, LOOP_STAGES=config.loop_stages,
        HAS_BIAS=bias is not None, SPLIT=split_k > 1, EVEN_N=n % config.block_n == 0, EVEN_K=k % PACK_K == 0,
        EVEN_STEPS=per_iteration == 1 or n_blocks % blocks_per_split == 0, HALF2=use_half2(config, weight, x),
        num_warps=config.num_warps, num_stages=config.num_stages, **register_cap(config),
    )
    return y


assert SLAB_K == 16 and PACK_K == 128, "kernels hard-code 16-row slabs of 128-row blocks"
