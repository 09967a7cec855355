"""Warp-specialised int4 GEMM for Hopper (sm_90), written in Gluon: y^T = W^T x^T for M from 32 up.

The swapped GEMM (`gemm_swapped.py`) keeps the weight as the tensor cores' register operand, but in plain
Triton its two warpgroups share one software pipeline: both wait at the CTA barriers around each shared
buffer's reuse, so both dequantise at the same time and the tensor cores idle meanwhile (Nsight Compute,
28672x8192 M=1024: tensor pipe busy 67% of cycles against cuBLAS's 98%). Here each role has its own warps:

- a load warp copies, per 128-row block of K, the x tile (BLOCK_M, 128) and each 64-column part's (64, 16) words
  with TMA into a ring of `STAGES` shared buffers, and signals `ready[s]`;
- `WsConfig.warpgroups` (2 to 4) MMA warpgroups each own 64 of the BLOCK_N weight columns. Each waits for
  `ready[s]`, reads its words from shared memory straight into the wgmma register-operand layout, dequantises
  slab by slab (fp16 pairs, `half2.scaled_half_pairs`, the scale inside the operand), issues eight depth-16 wgmma
  against the x tile in shared memory, waits for them, and arrives on `empty[s]` so the load warp may refill the
  buffer.

The warpgroups meet only at the ring's barriers, never at a CTA barrier, so one dequantises while the others'
MMAs run. The zero point and scale words are loaded into registers two blocks ahead.

A program's work unit is one output tile over all of K, or (`WsConfig.split_k`) over one of split_k ranges of
K blocks: shapes of few tiles (N = 4096 at M <= 256: 32 tiles of 128 columns) then fill the multiprocessors.
With `WsConfig.split_tail` only the tiles past the last whole wave of programs are split: of a shape of 5.2 waves
of tiles (22016x4096 at M=1024) only the last 28 tiles write partials, and their pieces spread over all programs
(5.25 tile times instead of 6 with 4 splits; 5% less time on the H100, as each split tile's partials cost more than
its share). The splits meet as in `splitk.py`, in a fixed order by the last to finish, through tile-local partials;
each 64-column part of a tile counts its splits on its own counter, so the warpgroups never wait for each other. The
sum leaves as a whole tile's y does (through TMA with `tma_store`).

With `WsConfig.stream_k` (stream-K's hybrid) the tiles of whole waves are whole units too, and the other tiles' K
blocks, laid end to end, are cut into one equal run a program. A run that reaches the end of a tile's blocks goes on
into the next tile, so a unit has segments (`_segment`), one a tile it reaches; a segment's piece of a tile meets the
tile's other pieces as split tiles do, in the order of their runs. Every program then gets the same number of blocks
whatever the shape: 224 tiles on 132 programs take 1.70 tile times, against 1.75 with the last wave's K in 4 splits.

With `WsConfig.slice_k` the MMA warpgroups share one tile of 64 weight columns and take turns over its K blocks:
warpgroup g reads the ring positions p with p % warpgroups == g, so each reads buffers of the ring of its own (the
ring's depth is then a multiple of the warpgroups: an mbarrier's phase parity only says whether the next phase is
done, so a warpgroup may not skip a fill of a buffer it waits on). At the end of a work unit the others hand their
float32 sums to warpgroup 0 through shared memory, which adds them in warpgroup order and stores the tile. The tiles
are 1 / warpgroups as wide, so a shape has that many times more of them: those that split K across programs to fill
the multiprocessors (N = 8192 at M <= 128, N = 4096 at M = 256) fill them with whole tiles, or fewer splits, and skip
the partials' round trip through L2 (3.2-6.2 us of a 22-36 us layer on the H100).

With `WsConfig.tma_store` a whole tile's y leaves through a (BLOCK_M, 64) shared buffer a warpgroup, written with
stmatrix, and a TMA store left in flight into the next tile; from registers, y took 2-byte stores (adjacent
registers hold rows of y N apart) and 5-13% of the time on the H100 (benchmarks/README.md).

With `WsConfig.paired_blocks` a warpgroup takes two blocks an iteration into two accumulators, so the second
block is dequantised while the first block's MMAs run (MMAs may not stay in flight across the loop's back-edge,
but inside one iteration they may): 2-10% faster on 64-row tiles on the H100, twice the accumulator registers.

fp16 only (inline PTX for the dequantisation), groups of whole 128-row blocks, K a multiple of 8 (TMA strides
are 16-byte multiples); `runs` says whether a call qualifies. Gluon has no CPU interpreter: this kernel is
tested on the GPU only, against the same float64 reference as the others.
"""
from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .configs import COLUMNS_PER_WARPGROUP, WsConfig
from .gemm import k_splits
from .half2 import SCALED_HIGH_PAIRS_ASM, SCALED_LOW_PAIRS_ASM, WEIGHT_SCALE as _WEIGHT_SCALE, scale_pairs, zero_pairs
from .prepare import PACK_K, PreparedWeight
from .splitk import MAX_TILES, arrival_counters
from .zero_scale import split_zero_scale

PAIR_SCALE = gl.constexpr(_WEIGHT_SCALE)  # `slab pairs` hold (q - z) / 16
X_BOX = 64  # K columns of one x copy: 128 bytes of fp16, the widest swizzled TMA box
LOAD_REGISTERS = 40  # registers a thread of the load warp keeps (setmaxnreg): it only issues copies
# setmaxnreg shares one multiprocessor's 64K registers among the program's warpgroups of 128 threads: at most 512 a
# thread summed over the MMA warpgroups and the load warp's
REGISTER_FILE_PER_THREAD = 512
MAX_SHARED_BYTES = 227 * 1024  # shared memory one program may have on sm_90
BUFFER_BYTES = MAX_SHARED_BYTES - 1024  # what the ring and the y tiles may take: 1 KB left for the barriers
# Tile rows each MMA warpgroup count compiles for without spilling in its register budget (ptxas -v, sm_90a, Triton
# 3.6): the (64, block_m) float32 accumulator takes block_m / 2 registers a thread. 3 warpgroups at 256 rows fail
# to assemble; 4 at 128 rows spill 232 bytes (and at 64 rows with paired blocks, 36)
MAX_BLOCK_M = {2: 256, 3: 128, 4: 64}
# With `WsConfig.slice_k`, warpgroup 0 adds the others' slice sums to its accumulator: tiles of up to 128 rows (a
# 256-row slice sum would also take 64 KB of shared memory, a ring stage)
SLICED_MAX_BLOCK_M = 128
WG_COLUMNS = gl.constexpr(COLUMNS_PER_WARPGROUP)
X_BOX_K = gl.constexpr(X_BOX)
LOAD_REGS = gl.constexpr(LOAD_REGISTERS)


@gluon.jit
def _unit_blocks(unit, whole_tiles, span, slots, n_blocks, total_blocks, STREAM_K: gl.constexpr):
    """Work unit -> its K blocks [lo, hi) in the launch's order of blocks (tile t's block b is t n_blocks + b). Units
    below `whole_tiles` are whole tiles; past them each tile is `slots` units (its splits) of `span` blocks (the last
    one shorter), or (STREAM_K) each unit is the next `span` blocks of the split tiles' run, reaching into the next
    tile where a tile's blocks run out. Splits of one tile are neighbours, then M tiles, so the programs that share a
    weight tile run together."""
    past = gl.maximum(unit - whole_tiles, 0)  # the unit's place among the split ones
    if STREAM_K:
        lo = whole_tiles * n_blocks + past * span
        hi = gl.minimum(lo + span, total_blocks)
    else:
        tile = whole_tiles + past // slots
        pid_k = past % slots
        lo = tile * n_blocks + pid_k * span
        hi = tile * n_blocks + gl.minimum((pid_k + 1) * span, n_blocks)
    whole = unit < whole_tiles
    return gl.where(whole, unit * n_blocks, lo), gl.where(whole, (unit + 1) * n_blocks, hi)


@gluon.jit
def _segments(lo, hi, n_blocks):
    """How many tiles the blocks [lo, hi) of a unit reach into: its segments, one a tile."""
    return gl.where(hi > lo, (hi - 1) // n_blocks - lo // n_blocks + 1, 0)


@gluon.jit
def _segment(unit, lo, hi, i, whole_tiles, span, slots, n_blocks, tiles_m, BLOCK_M: gl.constexpr,
             BLOCK_N: gl.constexpr, STREAM_K: gl.constexpr):
    """Segment i of the unit of blocks [lo, hi) -> (output tile, its first row, its first weight column, its blocks
    [b_start, b_end), this segment's place among the units that reach into the tile (`slot`: its partial's), how many
    do (`count`: 1 for a tile done in one piece))."""
    tile = lo // n_blocks + i
    b_start = gl.maximum(lo - tile * n_blocks, 0)
    b_end = gl.minimum(hi - tile * n_blocks, n_blocks)
    tail = tile - whole_tiles  # the tile's place among the split ones
    if STREAM_K:
        first = tail * n_blocks // span  # the first of the split units to reach into the tile
        count = ((tail + 1) * n_blocks - 1) // span - first + 1
        slot = unit - whole_tiles - first
    else:
        count = slots
        slot = b_start // span
    count = gl.where(tail >= 0, count, 1)
    return tile, (tile % tiles_m) * BLOCK_M, (tile // tiles_m) * BLOCK_N, b_start, b_end, slot, count


@gluon.jit
def _load_partition(x_desc, w_desc, x_bufs, w_bufs, ready, empty, M, N, n_blocks, span, slots, whole_tiles, units,
                    first_unit, unit_step, STREAM_K: gl.constexpr):
    """The load warp: block b of each segment of the program's work units, its x tile (two 64-column boxes) and the
    words of each 64-column part of the tile, into the next buffer of the ring."""
    STAGES: gl.constexpr = ready.type.shape[0]
    PARTS: gl.constexpr = w_bufs.type.shape[0] // STAGES  # the tile's 64-column parts
    BLOCK_M: gl.constexpr = x_bufs.type.shape[1]
    BLOCK_N: gl.constexpr = PARTS * WG_COLUMNS
    nbytes: gl.constexpr = 2 * x_desc.block_type.nbytes + PARTS * w_desc.block_type.nbytes
    tiles_m = gl.cdiv(M, BLOCK_M)
    total_blocks = gl.cdiv(N, BLOCK_N) * tiles_m * n_blocks
    it = 0  # blocks loaded so far: the ring position
    for unit in range(first_unit, units, unit_step):
        lo, hi = _unit_blocks(unit, whole_tiles, span, slots, n_blocks, total_blocks, STREAM_K)
        for i in range(_segments(lo, hi, n_blocks)):
            tile, off_m, off_n, b_start, b_end, slot, count = _segment(unit, lo, hi, i, whole_tiles, span, slots,
                                                                       n_blocks, tiles_m, BLOCK_M, BLOCK_N, STREAM_K)
            for b in range(b_start, b_end):
                s = it % STAGES
                mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)  # the ring starts empty: phase 1 passes
                bar = ready.index(s)
                mbarrier.expect(bar, nbytes)
                tma.async_copy_global_to_shared(x_desc, [off_m, b * 128], bar, x_bufs.index(2 * s))
                tma.async_copy_global_to_shared(x_desc, [off_m, b * 128 + X_BOX_K], bar, x_bufs.index(2 * s + 1))
                for g in gl.static_range(PARTS):  # each part's (64, 16) words in a buffer of their own
                    tma.async_copy_global_to_shared(w_desc, [b * N + off_n + g * WG_COLUMNS, 0], bar,
                                                    w_bufs.index(s * PARTS + g))
                it += 1


@gluon.jit
def _scaled_half(words, z64, z4, scale16, HIGH: gl.constexpr):
    """Slabs 0..3 (HIGH False) or 4..7 of the words as fp16 (q - z) * s (`half2.scaled_half_pairs`)."""
    return gl.inline_asm_elementwise(asm=SCALED_HIGH_PAIRS_ASM if HIGH else SCALED_LOW_PAIRS_ASM,
                                     constraints="=r,=r,=r,=r,r,r,r,r,r,r,r,r", args=[words, z64, z4, scale16],
                                     dtype=(gl.float16,) * 4, is_pure=True, pack=2)


@gluon.jit
def _zero_scale_words(zs_ptr, b, blocks_per_group, N, cols):
    """The (64, 1) zero point and scale words of block b's group for weight columns `cols` (0 past N)."""
    return gl.load(zs_ptr + (b // blocks_per_group) * N + cols, mask=cols < N, other=0)


@gluon.jit
def _zero_scale_pairs(word, zeros):
    """(64, 1) zero point and scale words -> the fp16 pairs the dequantisation adds and multiplies by (int32,
    shaped like `zeros`): -(64 + z / 16), -(4 + z / 16) and 16 s (`half2.zero_pairs`, `half2.scale_pairs`)."""
    z, s = split_zero_scale(word, gl.float16)
    z64, z4 = zero_pairs(z)
    return z64 + zeros, z4 + zeros, scale_pairs(s * PAIR_SCALE) + zeros


@gluon.jit
def _block_product(acc, x_bufs, w_bufs, ready, s, phase, zs_word, a_layout: gl.constexpr, PART: gl.constexpr):
    """acc + the tile's 64 columns `PART` of the block in buffer s (once it has arrived) times its x tile: eight
    depth-16 wgmma issued, not waited for."""
    mbarrier.wait(ready.index(s), phase)
    PARTS: gl.constexpr = w_bufs.type.shape[0] // ready.type.shape[0]
    words = w_bufs.index(s * PARTS + PART).load(a_layout)  # (64, 16) int32
    zeros = gl.zeros_like(words)
    z64, z4, scale16 = _zero_scale_pairs(zs_word, zeros)
    for h in gl.static_range(2):  # half h: slabs 4 h .. 4 h + 3, x columns 64 h .. 64 h + 63
        w0, w1, w2, w3 = _scaled_half(words, z64, z4, scale16, h == 1)  # (64, 16) fp16 each
        xh = x_bufs.index(2 * s + h)  # (BLOCK_M, 64)
        acc = warpgroup_mma(w0, xh.slice(0, 16, dim=1).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma(w1, xh.slice(16, 16, dim=1).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma(w2, xh.slice(32, 16, dim=1).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma(w3, xh.slice(48, 16, dim=1).permute((1, 0)), acc, is_async=True)
    return acc


@gluon.jit
def _y_columns(acc, col0):
    """The (64, 1) weight columns col0 .. col0 + 63 of a warpgroup's (64, BLOCK_M) y^T tile, in its layout."""
    return gl.expand_dims(col0 + gl.arange(0, WG_COLUMNS, layout=gl.SliceLayout(1, acc.type.layout)), 1)


@gluon.jit
def _plus_bias(acc, bias_ptr, has_bias, N, col0):
    """A warpgroup's (64, BLOCK_M) float32 y^T tile plus the bias of its columns (if there is one)."""
    if has_bias:
        cols = _y_columns(acc, col0)  # (64, 1)
        acc += gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)
    return acc


@gluon.jit
def _store_y(acc, y_ptr, bias_ptr, has_bias, M, N, stride_ym, off_m, col0):
    """Write a warpgroup's (64, BLOCK_M) float32 y^T tile (plus the bias) to y (M, N) in fp16."""
    BLOCK_M: gl.constexpr = acc.type.shape[1]
    cols = _y_columns(acc, col0)  # (64, 1)
    rows = gl.expand_dims(off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, acc.type.layout)), 0)  # (1, BLOCK_M)
    acc = _plus_bias(acc, bias_ptr, has_bias, N, col0)
    gl.store(y_ptr + rows * stride_ym + cols, acc.to(gl.float16), mask=(rows < M) & (cols < N))


@gluon.jit
def _store_y_tma(acc, y_desc, buf, bias_ptr, has_bias, N, off_m, col0):
    """Write a warpgroup's (64, BLOCK_M) float32 y^T tile (plus the bias) to y in fp16 through `buf`, its (BLOCK_M, 64)
    shared buffer, and a TMA store, left in flight: the warpgroup goes on to its next tile while the copy runs. TMA
    clips the rows past M and the columns past N."""
    acc = _plus_bias(acc, bias_ptr, has_bias, N, col0)
    tma.store_wait(0)  # the previous tile's copy has read the buffer
    gl.thread_barrier()  # ... as every thread of the warpgroup sees
    buf.permute((1, 0)).store(acc.to(gl.float16))  # (64, BLOCK_M) view of the (BLOCK_M, 64) y tile
    fence_async_shared()  # our shared writes come before the copy's reads
    gl.thread_barrier()
    tma.async_copy_shared_to_global(y_desc, [off_m, col0], buf)


@gluon.jit
def _store_tile(acc, y_ptr, y_desc, y_bufs, bias_ptr, has_bias, M, N, stride_ym, off_m, col0, PART: gl.constexpr,
                TMA_STORE: gl.constexpr):
    """A tile's 64-column part `PART` (a whole tile's, or a split one's sum) to y: through shared memory and TMA
    (TMA_STORE), else from registers."""
    if TMA_STORE:
        _store_y_tma(acc, y_desc, y_bufs.index(PART), bias_ptr, has_bias, N, off_m, col0)
    else:
        _store_y(acc, y_ptr, bias_ptr, has_bias, M, N, stride_ym, off_m, col0)


@gluon.jit
def _partial_offsets(acc):
    """Where each element of a warpgroup's (64, BLOCK_M) float32 wgmma accumulator goes in its partial: register i of
    thread t at i 128 + t. Each store of one register by a warp then writes 32 neighbouring floats, one whole 128-byte
    line; in the tile's (column, row) order a warp's store wrote 32 bytes into each of 8 lines. (Any one-to-one order
    sums the same bits: the partials are written and read in this one layout.) The accumulator's layout: warp w holds
    rows 16 w .. 16 w + 15, lane l rows l / 4 and l / 4 + 8 of them at columns 8 j + 2 (l % 4) and the next, registers
    4 j .. 4 j + 3 (PTX ISA, wgmma's D fragments)."""
    layout: gl.constexpr = acc.type.layout
    BLOCK_M: gl.constexpr = acc.type.shape[1]
    r = gl.expand_dims(gl.arange(0, WG_COLUMNS, layout=gl.SliceLayout(1, layout)), 1)  # (64, 1)
    c = gl.expand_dims(gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, layout)), 0)  # (1, BLOCK_M)
    thread = (r // 16) * 32 + (r % 8) * 4 + (c % 8) // 2  # (64, BLOCK_M)
    register = (c // 8) * 4 + (r % 16) // 8 * 2 + c % 2  # (64, BLOCK_M)
    return register * 128 + thread


@gluon.jit
def _merge_splits(acc, y_ptr, y_desc, y_bufs, ws_ptr, count_ptr, bias_ptr, tile, whole_tiles, slot, count, slots,
                  has_bias, M, N, stride_ym, off_m, col0, PART: gl.constexpr, PARTS: gl.constexpr,
                  TMA_STORE: gl.constexpr):
    """A split tile's 64-column part meets the tile's other `count` - 1 pieces as in `splitk.py`: publish this
    piece's float32 partial, count in on the part's own counter behind the warpgroup's own barrier; the last to
    arrive sums the partials in slot order (its own from its registers where that keeps the order), writes y as a
    whole tile does (through shared memory and TMA with TMA_STORE) and resets the counter. The partials are
    tile-local, in the accumulator's register order (`_partial_offsets`): slot s of part PART of the i-th split tile
    at ((i slots + s) PARTS + PART) 64 BLOCK_M floats. So they need no mask, and the workspace holds the split tiles
    only."""
    local = _partial_offsets(acc)
    BLOCK_M: gl.constexpr = acc.type.shape[1]
    part_floats: gl.constexpr = WG_COLUMNS * BLOCK_M
    first = ws_ptr + (((tile - whole_tiles) * slots * PARTS + PART).to(gl.int64) * part_floats)  # slot 0
    slot_stride = PARTS * part_floats
    gl.store(first + slot * slot_stride + local, acc)
    gl.thread_barrier()  # every thread's partial is written before the counter says so
    counter = count_ptr + PARTS * tile + PART
    if gl.atomic_add(counter, 1, sem="acq_rel") == count - 1:
        # The sum in slot order, ((p0 + p1) + p2) + ..., whoever is last: slot 0 or 1 adds the other of the two to
        # its own partial in its registers (p0 + p1 and p1 + p0 are the same bits), a later slot starts from p0
        # (.cg: from L2, where the other programs' partials are)
        if slot < 2:
            acc += gl.load(first + (1 - slot) * slot_stride + local, cache_modifier=".cg")
        else:
            acc = gl.load(first + local, cache_modifier=".cg")
            acc += gl.load(first + slot_stride + local, cache_modifier=".cg")
        for s in range(2, count):
            acc += gl.load(first + s * slot_stride + local, cache_modifier=".cg")
        gl.atomic_xchg(counter, 0)
        _store_tile(acc, y_ptr, y_desc, y_bufs, bias_ptr, has_bias, M, N, stride_ym, off_m, col0, PART, TMA_STORE)


@gluon.jit
def _sum_slices(acc, red_bufs, red_ready, red_free, phase, WG: gl.constexpr, WARPGROUPS: gl.constexpr):
    """With `slice_k`: warpgroup 0 gets the tile's sum over the warpgroups' K slices, in warpgroup order; the others
    hand theirs over through a (64, BLOCK_M) float32 shared buffer each, once warpgroup 0 has read the previous
    unit's (`red_free`), and go on to their next unit."""
    if WG == 0:
        mbarrier.wait(red_ready.index(0), phase)
        for g in gl.static_range(1, WARPGROUPS):
            acc += red_bufs.index(g - 1).load(acc.type.layout)
        gl.thread_barrier()  # every thread has read before the buffers are given back
        mbarrier.arrive(red_free.index(0), count=1)
    else:
        mbarrier.wait(red_free.index(0), phase ^ 1)  # free from the start: phase 1 passes
        red_bufs.index(WG - 1).store(acc)
        gl.thread_barrier()  # every thread has written before warpgroup 0 is told
        mbarrier.arrive(red_ready.index(0), count=1)
    return acc


@gluon.jit
def _mma_partition(args, WG: gl.constexpr, WARPGROUPS: gl.constexpr, SLICE_K: gl.constexpr, SPLIT: gl.constexpr,
                   PAIRED: gl.constexpr, TMA_STORE: gl.constexpr, STREAM_K: gl.constexpr):
    """One MMA warpgroup: of each segment of the program's work units, weight columns 64 WG .. 64 WG + 63 against
    the tile's BLOCK_M rows of x over the segment's blocks; with SLICE_K, the tile's only 64 columns over every
    WARPGROUPS-th of the segment's blocks (those in its buffers of the ring), the slices then summed (`_sum_slices`)
    and stored by warpgroup 0. `args` are the kernel's values every warpgroup shares. (Sizes come from the buffers'
    shapes: a constexpr passed through `warp_specialize` in a variable arrives as a value.)"""
    (x_bufs, w_bufs, y_bufs, red_bufs, ready, empty, red_ready, red_free, zs_ptr, y_ptr, y_desc, ws_ptr, count_ptr,
     bias_ptr, M, N, stride_ym, n_blocks, span, slots, blocks_per_group, has_bias, whole_tiles, units, first_unit,
     unit_step) = args
    STAGES: gl.constexpr = ready.type.shape[0]
    PARTS: gl.constexpr = w_bufs.type.shape[0] // STAGES  # the tile's 64-column parts: 1 with SLICE_K
    PART: gl.constexpr = WG % PARTS  # this warpgroup's part
    # 1, or WARPGROUPS with SLICE_K: this warpgroup reads the ring positions p with p % KSTEP == WG // PARTS, so (with
    # STAGES a multiple of KSTEP) always the same buffers, each one's fills in order: an mbarrier's phase parity tells
    # only whether the next phase is done, so a warpgroup may not skip a fill of a buffer it waits on
    KSTEP: gl.constexpr = WARPGROUPS // PARTS
    KFIRST: gl.constexpr = WG // PARTS
    BLOCK_M: gl.constexpr = x_bufs.type.shape[1]
    BLOCK_N: gl.constexpr = PARTS * WG_COLUMNS
    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BLOCK_M, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_layout, k_width=2)
    tiles_m = gl.cdiv(M, BLOCK_M)
    total_blocks = gl.cdiv(N, BLOCK_N) * tiles_m * n_blocks
    it = 0  # the ring position of the segment's first block
    done = 0  # segments finished
    for unit in range(first_unit, units, unit_step):
        lo, hi = _unit_blocks(unit, whole_tiles, span, slots, n_blocks, total_blocks, STREAM_K)
        for i in range(_segments(lo, hi, n_blocks)):
            tile, off_m, off_n, b_start, b_end, slot, count = _segment(unit, lo, hi, i, whole_tiles, span, slots,
                                                                       n_blocks, tiles_m, BLOCK_M, BLOCK_N, STREAM_K)
            col0 = off_n + PART * WG_COLUMNS
            zs_cols = gl.expand_dims(col0 + gl.arange(0, WG_COLUMNS, layout=gl.SliceLayout(1, a_layout)), 1)  # (64, 1)
            acc = gl.zeros((WG_COLUMNS, BLOCK_M), gl.float32, layout=mma_layout)  # y^T tile
            first = b_start + (KFIRST + KSTEP - it % KSTEP) % KSTEP  # this warpgroup's first block (KSTEP apart)
            last = b_end - 1  # past it, the zero point and scale loads take the segment's last block again
            # The zero point and scale words two of the warpgroup's blocks ahead: at M <= 128 a block's MMAs take less
            # than a load from memory (H100, 8192x8192 M=128: 43.1 us one block ahead, 38.7 two, 39.0 three, 36.4 never
            # reloaded)
            zs_this = _zero_scale_words(zs_ptr, gl.minimum(first, last), blocks_per_group, N, zs_cols)
            zs_next = _zero_scale_words(zs_ptr, gl.minimum(first + KSTEP, last), blocks_per_group, N, zs_cols)
            b = first
            if PAIRED:
                # Two blocks an iteration into two accumulators: the second block is dequantised while the first
                # one's MMAs run, and one wait covers both (the wait must still come before the loop's back-edge)
                acc2 = gl.zeros_like(acc)
                for b0 in range(first, b_end - KSTEP, 2 * KSTEP):
                    zs_first = zs_this
                    zs_second = zs_next
                    zs_this = _zero_scale_words(zs_ptr, gl.minimum(b0 + 2 * KSTEP, last), blocks_per_group, N, zs_cols)
                    zs_next = _zero_scale_words(zs_ptr, gl.minimum(b0 + 3 * KSTEP, last), blocks_per_group, N, zs_cols)
                    p0 = it + b0 - b_start  # ring positions
                    p1 = p0 + KSTEP
                    s0 = p0 % STAGES
                    s1 = p1 % STAGES
                    acc = _block_product(acc, x_bufs, w_bufs, ready, s0, (p0 // STAGES) & 1, zs_first, a_layout,
                                         PART)
                    acc2 = _block_product(acc2, x_bufs, w_bufs, ready, s1, (p1 // STAGES) & 1, zs_second, a_layout,
                                          PART)
                    acc, acc2 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, acc2))
                    fence_async_shared()  # our shared reads come before the load warp's next copies into the buffers
                    mbarrier.arrive(empty.index(s0), count=1)
                    mbarrier.arrive(empty.index(s1), count=1)
                # an odd count's last block, one at a time below
                b = first + gl.maximum(gl.cdiv(b_end - first, KSTEP), 0) // 2 * (2 * KSTEP)
                acc += acc2
            for b in range(b, b_end, KSTEP):
                p = it + b - b_start
                s = p % STAGES
                zs_word = zs_this
                zs_this = zs_next
                zs_next = _zero_scale_words(zs_ptr, gl.minimum(b + 2 * KSTEP, last), blocks_per_group, N, zs_cols)
                acc = _block_product(acc, x_bufs, w_bufs, ready, s, (p // STAGES) & 1, zs_word, a_layout, PART)
                # all of the block's MMAs done before the next block (MMAs left in flight across the loop's back-edge
                # make ptxas serialise every one of them, C7515, as in `gemm_swapped.py`)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                fence_async_shared()  # our shared reads come before the load warp's next copy into the buffer
                mbarrier.arrive(empty.index(s), count=1)
            it += b_end - b_start
            if SLICE_K:
                acc = _sum_slices(acc, red_bufs, red_ready, red_free, done & 1, WG, WARPGROUPS)
            done += 1
            if WG < PARTS:  # every warpgroup stores its part, or with SLICE_K warpgroup 0 the tile
                if SPLIT:
                    if count > 1:
                        _merge_splits(acc, y_ptr, y_desc, y_bufs, ws_ptr, count_ptr, bias_ptr, tile, whole_tiles, slot,
                                      count, slots, has_bias, M, N, stride_ym, off_m, col0, PART, PARTS, TMA_STORE)
                    else:
                        _store_tile(acc, y_ptr, y_desc, y_bufs, bias_ptr, has_bias, M, N, stride_ym, off_m, col0, PART,
                                    TMA_STORE)
                else:
                    _store_tile(acc, y_ptr, y_desc, y_bufs, bias_ptr, has_bias, M, N, stride_ym, off_m, col0, PART,
                                TMA_STORE)
    if TMA_STORE:
        tma.store_wait(0)  # the last copy done before the program ends


@gluon.jit
def gemm_ws_kernel(x_desc, w_desc, y_desc, zs_ptr, y_ptr, ws_ptr, count_ptr, bias_ptr, M, N, stride_ym, n_blocks,
                   span, slots, blocks_per_group, has_bias, whole_tiles, units, BLOCK_M: gl.constexpr,
                   STAGES: gl.constexpr, MMA_REGS: gl.constexpr, PERSISTENT: gl.constexpr, SPLIT: gl.constexpr,
                   PAIRED: gl.constexpr, TMA_STORE: gl.constexpr, WARPGROUPS: gl.constexpr, SLICE_K: gl.constexpr,
                   STREAM_K: gl.constexpr):
    """`units` work units (`_unit_blocks`): tiles of (BLOCK_M rows of x) x (64 WARPGROUPS weight columns, or 64 with
    SLICE_K), the first `whole_tiles` over all of K and each later one as `slots` units (its splits) of `span` blocks,
    or (STREAM_K) the later tiles' blocks in runs of `span`, each tile meeting at most `slots` of them. One unit a
    program, or (PERSISTENT) units pid, pid + programs, ... with the ring running on from one unit to the next."""
    PARTS: gl.constexpr = 1 if SLICE_K else WARPGROUPS  # the tile's 64-column parts
    x_bufs = gl.allocate_shared_memory(gl.float16, [2 * STAGES, BLOCK_M, X_BOX_K], x_desc.layout)
    w_bufs = gl.allocate_shared_memory(gl.int32, [STAGES * PARTS, WG_COLUMNS, 16], w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    if TMA_STORE:  # each part's (BLOCK_M, 64) y tile on its way out
        y_bufs = gl.allocate_shared_memory(gl.float16, [PARTS, BLOCK_M, WG_COLUMNS], y_desc.layout)
    else:
        y_bufs = w_bufs  # unused
    if SLICE_K:  # warpgroups 1.. hand their K slices' sums to warpgroup 0 here
        red_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=32, rank=2)
        red_bufs = gl.allocate_shared_memory(gl.float32, [WARPGROUPS - 1, WG_COLUMNS, BLOCK_M], red_layout)
        red_ready = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
        red_free = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
        mbarrier.init(red_ready.index(0), count=WARPGROUPS - 1)
        mbarrier.init(red_free.index(0), count=1)
    else:
        red_bufs = w_bufs  # unused
        red_ready = ready
        red_free = empty
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=PARTS)  # every warpgroup that reads a buffer releases it
    first_unit = gl.program_id(0)
    unit_step = gl.num_programs(0) if PERSISTENT else units
    shared = (x_bufs, w_bufs, y_bufs, red_bufs, ready, empty, red_ready, red_free, zs_ptr, y_ptr, y_desc, ws_ptr,
              count_ptr, bias_ptr, M, N, stride_ym, n_blocks, span, slots, blocks_per_group, has_bias, whole_tiles,
              units, first_unit, unit_step)
    load = (x_desc, w_desc, x_bufs, w_bufs, ready, empty, M, N, n_blocks, span, slots, whole_tiles, units, first_unit,
            unit_step, STREAM_K)
    # One partition per MMA warpgroup, the first in the kernel's own 4 warps, each with its constexprs written out
    if WARPGROUPS == 2:
        gl.warp_specialize([(_mma_partition, (shared, 0, WARPGROUPS, SLICE_K, SPLIT, PAIRED, TMA_STORE, STREAM_K)),
                            (_mma_partition, (shared, 1, WARPGROUPS, SLICE_K, SPLIT, PAIRED, TMA_STORE, STREAM_K)),
                            (_load_partition, load)], [4, 1], [MMA_REGS, LOAD_REGS])
    elif WARPGROUPS == 3:
        gl.warp_specialize([(_mma_partition, (shared, 0, WARPGROUPS, SLICE_K, SPLIT, PAIRED, TMA_STORE, STREAM_K)),
                            (_mma_partition, (shared, 1, WARPGROUPS, SLICE_K, SPLIT, PAIRED, TMA_STORE, STREAM_K)),
                            (_mma_partition, (shared, 2, WARPGROUPS, SLICE_K, SPLIT, PAIRED, TMA_STORE, STREAM_K)),
                            (_load_partition, load)], [4, 4, 1], [MMA_REGS, MMA_REGS, LOAD_REGS])
    else:
        gl.static_assert(WARPGROUPS == 4, "2, 3 or 4 MMA warpgroups")
        gl.warp_specialize([(_mma_partition, (shared, 0, WARPGROUPS, SLICE_K, SPLIT, PAIRED, TMA_STORE, STREAM_K)),
                            (_mma_partition, (shared, 1, WARPGROUPS, SLICE_K, SPLIT, PAIRED, TMA_STORE, STREAM_K)),
                            (_mma_partition, (shared, 2, WARPGROUPS, SLICE_K, SPLIT, PAIRED, TMA_STORE, STREAM_K)),
                            (_mma_partition, (shared, 3, WARPGROUPS, SLICE_K, SPLIT, PAIRED, TMA_STORE, STREAM_K)),
                            (_load_partition, load)], [4, 4, 4, 1], [MMA_REGS, MMA_REGS, MMA_REGS, LOAD_REGS])


def split_layout(tiles: int, split_k: int, split_tail: bool, wave: int) -> tuple[int, int]:
    """(whole tiles, work units) of a launch of `tiles` output tiles with K in `split_k` splits on `wave` programs at
    once: every tile split, or (split_tail) only the tiles past the last whole wave."""
    whole = tiles // wave * wave if split_tail and split_k > 1 else 0
    return whole, whole + (tiles - whole) * split_k


def stream_k_layout(tiles: int, n_blocks: int, wave: int) -> tuple[int, int, int, int]:
    """(whole tiles, work units, blocks a split unit, partials a split tile has room for) of stream-K's hybrid on `wave`
    programs: the tiles of whole waves each in one unit, the rest's `n_blocks` K blocks a tile laid end to end and cut
    into one run of equal length a program. A run may reach into the next tile, so a tile meets up to
    cdiv(n_blocks - 1, span) + 1 runs (its partials' slots)."""
    whole = tiles // wave * wave
    run = (tiles - whole) * n_blocks
    if run == 0:
        return whole, whole, n_blocks, 1
    span = triton.cdiv(run, wave)
    return whole, whole + triton.cdiv(run, span), span, triton.cdiv(n_blocks - 1, span) + 1


def stage_bytes(block_m: int, parts: int = 2) -> int:
    """Shared memory of one buffer of the ring: the (block_m, 128) fp16 x tile and the (64 parts, 16) int32 words of
    the tile's 64-column parts."""
    return 2 * block_m * X_BOX * 2 + parts * COLUMNS_PER_WARPGROUP * 16 * 4


def shared_bytes(config: WsConfig) -> int:
    """Shared memory of a config's buffers: the ring, with `tma_store` each 64-column part's (block_m, 64) fp16 y tile,
    and with `slice_k` a (64, block_m) float32 slice sum for each warpgroup but the first."""
    y_tiles = config.parts * config.block_m * COLUMNS_PER_WARPGROUP * 2 if config.tma_store else 0
    slices = (config.warpgroups - 1) * COLUMNS_PER_WARPGROUP * config.block_m * 4 if config.slice_k else 0
    return config.stages * stage_bytes(config.block_m, config.parts) + y_tiles + slices


def mma_register_budget(warpgroups: int) -> int:
    """Registers a thread of each of `warpgroups` MMA warpgroups may take (setmaxnreg wants multiples of 8)."""
    return (REGISTER_FILE_PER_THREAD - LOAD_REGISTERS) // warpgroups // 8 * 8


def deepest_ring(block_m: int, warpgroups: int, tma_store: bool, slice_k: bool = False) -> int:
    """The most ring stages that fit BUFFER_BYTES beside the y tiles (and the slice sums; on K slices a multiple of the
    warpgroups, each reading its own buffers)."""
    config = WsConfig(block_m=block_m, stages=0, warpgroups=warpgroups, tma_store=tma_store, slice_k=slice_k)
    stages = (BUFFER_BYTES - shared_bytes(config)) // stage_bytes(block_m, config.parts)
    return stages // warpgroups * warpgroups if slice_k else stages


def max_block_m(warpgroups: int, slice_k: bool) -> int:
    """The most tile rows `warpgroups` MMA warpgroups compile for (MAX_BLOCK_M), on K slices SLICED_MAX_BLOCK_M."""
    return min(MAX_BLOCK_M[warpgroups], SLICED_MAX_BLOCK_M) if slice_k else MAX_BLOCK_M[warpgroups]


def check_config(config: WsConfig) -> None:
    """A clear error for a config the kernel cannot build, naming what to change."""
    assert config.warpgroups in MAX_BLOCK_M, f"warpgroups must be one of {sorted(MAX_BLOCK_M)}, got {config.warpgroups}"
    most_rows = max_block_m(config.warpgroups, config.slice_k)
    assert config.block_m <= most_rows, (
        f"{config.warpgroups} MMA warpgroups{' on K slices' if config.slice_k else ''} take tiles of up to {most_rows} "
        f"rows, got block_m={config.block_m}: use fewer warpgroups or smaller tiles")
    assert not config.slice_k or config.stages % config.warpgroups == 0, (
        f"{config.warpgroups} warpgroups on K slices each read buffers of the ring of their own: stages must be a "
        f"multiple of {config.warpgroups}, got {config.stages}")
    turns = config.warpgroups if config.slice_k else 1  # ring buffers between two of a warpgroup's own
    assert not config.paired_blocks or config.stages >= 2 * turns, (
        f"paired blocks hold two of a warpgroup's buffers at once: stages must be at least {2 * turns}, got "
        f"{config.stages}")
    assert not config.stream_k or (config.split_k == 1 and not config.split_tail), (
        f"stream_k cuts K across programs itself: leave split_k at 1 and split_tail off, got split_k={config.split_k}, "
        f"split_tail={config.split_tail}")
    assert shared_bytes(config) <= BUFFER_BYTES, (
        f"{config} needs {shared_bytes(config)} bytes of shared memory, over {BUFFER_BYTES}: use fewer "
        f"stages (at most {deepest_ring(config.block_m, config.warpgroups, config.tma_store, config.slice_k)})")


def fits(capability: tuple[int, int], weight: PreparedWeight, x: torch.Tensor) -> bool:
    """Whether the kernel takes this call on a GPU of `capability`: Hopper (sm_90: wgmma, TMA, register
    reallocation), fp16 x and scales (the inline PTX dequantises fp16 pairs), groups of whole 128-row blocks, and
    x's rows 16-byte aligned for TMA (K a multiple of 8, unit column stride)."""
    return (capability[0] == 9 and x.dtype == torch.float16 and weight.dtype == torch.float16
            and weight.group_size % PACK_K == 0 and x.stride(1) == 1 and x.stride(0) % 8 == 0
            and x.data_ptr() % 16 == 0)


def runs(weight: PreparedWeight, x: torch.Tensor) -> bool:
    """`fits` on x's GPU (False on the CPU)."""
    return x.is_cuda and fits(torch.cuda.get_device_capability(x.device), weight, x)


def gemm_ws(x: torch.Tensor, weight: PreparedWeight, bias: torch.Tensor | None, config: WsConfig) -> torch.Tensor:
    """x (M, K) fp16 -> (M, N) fp16."""
    assert runs(weight, x), (f"gemm_ws needs a Hopper GPU, fp16 x and scales, groups of whole {PACK_K}-row blocks and "
                             f"K % 8 == 0; got {x.dtype} x {tuple(x.shape)} on {x.device}, group {weight.group_size}")
    assert x.shape[1] == weight.in_features, f"x has K={x.shape[1]}, weight expects {weight.in_features}"
    check_config(config)
    m, k = x.shape
    n = weight.out_features
    x_layout = gl.NVMMASharedLayout.get_default_for([config.block_m, X_BOX], gl.float16)
    x_desc = TensorDescriptor(x, [m, k], [x.stride(0), 1], [config.block_m, X_BOX], x_layout)
    words = weight.qweight.view(-1, 16)  # (blocks * N, 16): block b's words of column n in row b N + n
    w_layout = gl.NVMMASharedLayout.get_default_for([COLUMNS_PER_WARPGROUP, 16], gl.int32)
    w_desc = TensorDescriptor(words, list(words.shape), [16, 1], [COLUMNS_PER_WARPGROUP, 16], w_layout)
    n_blocks = weight.qweight.shape[0]
    blocks_per_split, split_k = k_splits(n_blocks, config.split_k)
    tiles = triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    if config.stream_k:
        whole_tiles, units, span, slots = stream_k_layout(tiles, n_blocks, sms)
    else:
        whole_tiles, units = split_layout(tiles, split_k, config.split_tail, sms)
        span, slots = blocks_per_split, split_k  # a split's blocks; a tile's splits
    split = whole_tiles < tiles and slots > 1
    # each 64-column part of a split tile counts on its own counter
    assert config.parts * tiles <= MAX_TILES, (
        f"{tiles} tiles of {config.parts} parts exceed {MAX_TILES} counters: use larger tiles")
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    tma_store = config.tma_store and n % 8 == 0  # TMA needs y's rows 16-byte aligned
    y_desc = (TensorDescriptor(y, [m, n], [n, 1], [config.block_m, COLUMNS_PER_WARPGROUP], x_layout) if tma_store
              else x_desc)  # x's layout: (block_m, 64) fp16 both
    # each split tile's (slots, block_n, block_m) float32 partials
    workspace = (torch.empty((tiles - whole_tiles) * slots * config.block_n * config.block_m, device=x.device,
                             dtype=torch.float32) if split else y)
    counters = arrival_counters(x.device) if split else y
    grid = (min(units, sms) if config.persistent else units,)
    gemm_ws_kernel[grid](x_desc, w_desc, y_desc, weight.zero_scales, y, workspace, counters,
                         bias if bias is not None else y, m, n, y.stride(0), n_blocks, span, slots,
                         weight.group_size // PACK_K, bias is not None, whole_tiles, units,
                         BLOCK_M=config.block_m, STAGES=config.stages,
                         MMA_REGS=config.mma_registers or mma_register_budget(config.warpgroups),
                         PERSISTENT=config.persistent, SPLIT=split, PAIRED=config.paired_blocks, TMA_STORE=tma_store,
                         WARPGROUPS=config.warpgroups, SLICE_K=config.slice_k, STREAM_K=config.stream_k, num_warps=4)
    return y
