"""Warp-specialised int4 GEMM for Hopper (sm_90), written in Gluon: y^T = W^T x^T for large M.

The swapped GEMM (`gemm_swapped.py`) keeps the weight as the tensor cores' register operand, but in plain
Triton its two warpgroups share one software pipeline: both wait at the CTA barriers around each shared
buffer's reuse, so both dequantise at the same time and the tensor cores idle meanwhile (Nsight Compute,
28672x8192 M=1024: tensor pipe busy 67% of cycles against cuBLAS's 98%). Here each role has its own warps:

- a load warp copies, per 128-row block of K, the x tile (BLOCK_M, 128) and the (BLOCK_N, 16) words with
  TMA into a ring of `STAGES` shared buffers, and signals `ready[s]`;
- two MMA warpgroups each own 64 of the BLOCK_N weight columns. Each waits for `ready[s]`, reads its words
  from shared memory straight into the wgmma register-operand layout, dequantises slab by slab (fp16 pairs,
  `half2._slab_pairs_asm`, the scale inside the operand), issues eight depth-16 wgmma against the x tile in
  shared memory, waits for them, and arrives on `empty[s]` so the load warp may refill the buffer.

The two warpgroups meet only at the ring's barriers, never at a CTA barrier, so one dequantises while the
other's MMAs run. The zero point and scale words of the next block are loaded into registers a block ahead.

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

from .configs import WsConfig
from .half2 import WEIGHT_SCALE as _WEIGHT_SCALE, _slab_pairs_asm
from .prepare import PACK_K, PreparedWeight

LOW_PAIRS_ASM = gl.constexpr(_slab_pairs_asm(scaled=True, halves=("lo",)))
HIGH_PAIRS_ASM = gl.constexpr(_slab_pairs_asm(scaled=True, halves=("hi",)))
PAIR_SCALE = gl.constexpr(_WEIGHT_SCALE)  # `slab pairs` hold (q - z) / 16
COLUMNS_PER_WARPGROUP = 64  # weight columns a warpgroup owns: the wgmma's M
X_BOX = 64  # K columns of one x copy: 128 bytes of fp16, the widest swizzled TMA box
WG_COLUMNS = gl.constexpr(COLUMNS_PER_WARPGROUP)
X_BOX_K = gl.constexpr(X_BOX)


@gluon.jit
def _load_partition(x_desc, w_desc, x_bufs, w_bufs, ready, empty, M, N, n_blocks, first_tile, tile_step):
    """The load warp: block b of each of the program's tiles, its x tile (two 64-column boxes) and words, into the
    next buffer of the ring."""
    STAGES: gl.constexpr = w_bufs.type.shape[0]
    BLOCK_M: gl.constexpr = x_bufs.type.shape[1]
    BLOCK_N: gl.constexpr = w_bufs.type.shape[1]
    nbytes: gl.constexpr = 2 * x_desc.block_type.nbytes + w_desc.block_type.nbytes
    tiles_m = gl.cdiv(M, BLOCK_M)
    it = 0  # blocks loaded so far: the ring position
    for tile in range(first_tile, tiles_m * gl.cdiv(N, BLOCK_N), tile_step):
        off_m = (tile % tiles_m) * BLOCK_M
        off_n = (tile // tiles_m) * BLOCK_N
        for b in range(n_blocks):
            s = it % STAGES
            mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)  # the ring starts empty: phase 1 passes
            bar = ready.index(s)
            mbarrier.expect(bar, nbytes)
            tma.async_copy_global_to_shared(x_desc, [off_m, b * 128], bar, x_bufs.index(2 * s))
            tma.async_copy_global_to_shared(x_desc, [off_m, b * 128 + X_BOX_K], bar, x_bufs.index(2 * s + 1))
            tma.async_copy_global_to_shared(w_desc, [b * N + off_n, 0], bar, w_bufs.index(s))
            it += 1


@gluon.jit
def _scaled_half(words, z64, z4, scale16, HIGH: gl.constexpr):
    """Slabs 0..3 (HIGH False) or 4..7 of the words as fp16 (q - z) * s (`half2.scaled_half_pairs`)."""
    return gl.inline_asm_elementwise(asm=HIGH_PAIRS_ASM if HIGH else LOW_PAIRS_ASM,
                                     constraints="=r,=r,=r,=r,r,r,r,r,r,r,r,r", args=[words, z64, z4, scale16],
                                     dtype=(gl.float16,) * 4, is_pure=True, pack=2)


@gluon.jit
def _zero_scale_pairs(word, zeros):
    """(64, 1) zero point and scale words -> the fp16 pairs the dequantisation adds and multiplies by (int32,
    shaped like `zeros`): -(64 + z / 16), -(4 + z / 16) and 16 s (`half2.zero_pairs`, `half2.scale_pairs`)."""
    z = (word >> 16) & 0xFF
    low = 0xD400 + z
    high = 0xC400 + (z << 4)
    s = (word & 0xFFFF).to(gl.int16).to(gl.float16, bitcast=True).to(gl.float32) * PAIR_SCALE
    bits = s.to(gl.float16).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
    return (low | (low << 16)) + zeros, (high | (high << 16)) + zeros, (bits | (bits << 16)) + zeros


@gluon.jit
def _mma_partition(x_bufs, w_bufs, ready, empty, zs_ptr, y_ptr, bias_ptr, M, N, stride_ym, n_blocks,
                   blocks_per_group, has_bias, first_tile, tile_step, WG: gl.constexpr):
    """One MMA warpgroup: of each of the program's tiles, weight columns 64 WG .. 64 WG + 63 against the tile's
    BLOCK_M rows of x. (Sizes come from the buffers' shapes: a constexpr passed through `warp_specialize` in a
    variable arrives as a value.)"""
    STAGES: gl.constexpr = w_bufs.type.shape[0]
    BLOCK_M: gl.constexpr = x_bufs.type.shape[1]
    BLOCK_N: gl.constexpr = w_bufs.type.shape[1]
    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BLOCK_M, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_layout, k_width=2)
    tiles_m = gl.cdiv(M, BLOCK_M)
    it = 0  # blocks consumed so far: the ring position
    for tile in range(first_tile, tiles_m * gl.cdiv(N, BLOCK_N), tile_step):
        off_m = (tile % tiles_m) * BLOCK_M
        col0 = (tile // tiles_m) * BLOCK_N + WG * WG_COLUMNS
        zs_cols = gl.expand_dims(col0 + gl.arange(0, WG_COLUMNS, layout=gl.SliceLayout(1, a_layout)), 1)  # (64, 1)
        zs_mask = zs_cols < N
        acc = gl.zeros((WG_COLUMNS, BLOCK_M), gl.float32, layout=mma_layout)  # y^T tile
        zs_next = gl.load(zs_ptr + zs_cols, mask=zs_mask, other=0)  # block 0's group
        for b in range(n_blocks):
            s = it % STAGES
            zs_word = zs_next
            # the next block's zero point and scale, in flight during this block (past the last: its own again)
            b_next = gl.minimum(b + 1, n_blocks - 1)
            zs_next = gl.load(zs_ptr + (b_next // blocks_per_group) * N + zs_cols, mask=zs_mask, other=0)
            mbarrier.wait(ready.index(s), (it // STAGES) & 1)
            words = w_bufs.index(s).slice(WG * WG_COLUMNS, WG_COLUMNS, dim=0).load(a_layout)  # (64, 16) int32
            zeros = gl.zeros_like(words)
            z64, z4, scale16 = _zero_scale_pairs(zs_word, zeros)
            for h in gl.static_range(2):  # half h: slabs 4 h .. 4 h + 3, x columns 64 h .. 64 h + 63
                w0, w1, w2, w3 = _scaled_half(words, z64, z4, scale16, h == 1)  # (64, 16) fp16 each
                xh = x_bufs.index(2 * s + h)  # (BLOCK_M, 64)
                acc = warpgroup_mma(w0, xh.slice(0, 16, dim=1).permute((1, 0)), acc, is_async=True)
                acc = warpgroup_mma(w1, xh.slice(16, 16, dim=1).permute((1, 0)), acc, is_async=True)
                acc = warpgroup_mma(w2, xh.slice(32, 16, dim=1).permute((1, 0)), acc, is_async=True)
                acc = warpgroup_mma(w3, xh.slice(48, 16, dim=1).permute((1, 0)), acc, is_async=True)
            # all of the block's MMAs done before the next block (MMAs left in flight across the loop's back-edge
            # make ptxas serialise every one of them, C7515, as in `gemm_swapped.py`)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            fence_async_shared()  # our shared reads come before the load warp's next copy into the buffer
            mbarrier.arrive(empty.index(s), count=1)
            it += 1

        out_cols = gl.expand_dims(col0 + gl.arange(0, WG_COLUMNS, layout=gl.SliceLayout(1, mma_layout)), 1)
        out_rows = gl.expand_dims(off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, mma_layout)), 0)
        if has_bias:
            acc += gl.load(bias_ptr + out_cols, mask=out_cols < N, other=0.0).to(gl.float32)
        gl.store(y_ptr + out_rows * stride_ym + out_cols, acc.to(gl.float16), mask=(out_rows < M) & (out_cols < N))


@gluon.jit
def gemm_ws_kernel(x_desc, w_desc, zs_ptr, y_ptr, bias_ptr, M, N, stride_ym, n_blocks, blocks_per_group, has_bias,
                   BLOCK_M: gl.constexpr, STAGES: gl.constexpr, MMA_REGS: gl.constexpr, PERSISTENT: gl.constexpr):
    """Output tiles of (BLOCK_M rows of x) x (128 weight columns): one a program, or (PERSISTENT) tiles pid,
    pid + programs, ... with the ring running on from one tile to the next. M tiles vary fastest, so the
    programs that share a weight tile run together."""
    BLOCK_N: gl.constexpr = 2 * WG_COLUMNS
    x_bufs = gl.allocate_shared_memory(gl.float16, [2 * STAGES, BLOCK_M, X_BOX_K], x_desc.layout)
    w_bufs = gl.allocate_shared_memory(gl.int32, [STAGES, BLOCK_N, 16], w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=2)  # both MMA warpgroups release a buffer
    first_tile = gl.program_id(0)
    tile_step = gl.num_programs(0) if PERSISTENT else gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
    gl.warp_specialize([
        (_mma_partition, (x_bufs, w_bufs, ready, empty, zs_ptr, y_ptr, bias_ptr, M, N, stride_ym, n_blocks,
                          blocks_per_group, has_bias, first_tile, tile_step, 0)),  # WG written out: a constexpr
        (_mma_partition, (x_bufs, w_bufs, ready, empty, zs_ptr, y_ptr, bias_ptr, M, N, stride_ym, n_blocks,
                          blocks_per_group, has_bias, first_tile, tile_step, 1)),
        (_load_partition, (x_desc, w_desc, x_bufs, w_bufs, ready, empty, M, N, n_blocks, first_tile, tile_step)),
    ], [4, 1], [MMA_REGS, 40])


def stage_bytes(block_m: int) -> int:
    """Shared memory of one buffer of the ring: the (block_m, 128) fp16 x tile and the (128, 16) int32 words."""
    return 2 * block_m * X_BOX * 2 + 2 * COLUMNS_PER_WARPGROUP * 16 * 4


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
    m, k = x.shape
    n = weight.out_features
    block_n = 2 * COLUMNS_PER_WARPGROUP
    x_layout = gl.NVMMASharedLayout.get_default_for([config.block_m, X_BOX], gl.float16)
    x_desc = TensorDescriptor(x, [m, k], [x.stride(0), 1], [config.block_m, X_BOX], x_layout)
    words = weight.qweight.view(-1, 16)  # (blocks * N, 16): block b's words of column n in row b N + n
    w_layout = gl.NVMMASharedLayout.get_default_for([block_n, 16], gl.int32)
    w_desc = TensorDescriptor(words, list(words.shape), [16, 1], [block_n, 16], w_layout)
    y = torch.empty((m, n), device=x.device, dtype=torch.float16)
    tiles = triton.cdiv(m, config.block_m) * triton.cdiv(n, block_n)
    grid = (min(tiles, torch.cuda.get_device_properties(x.device).multi_processor_count) if config.persistent
            else tiles,)
    gemm_ws_kernel[grid](x_desc, w_desc, weight.zero_scales, y, bias if bias is not None else y, m, n, y.stride(0),
                         weight.qweight.shape[0], weight.group_size // PACK_K, bias is not None,
                         BLOCK_M=config.block_m, STAGES=config.stages, MMA_REGS=config.mma_registers,
                         PERSISTENT=config.persistent, num_warps=4)
    return y
