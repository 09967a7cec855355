"""Where split-K partial sums meet: a fixed-order sum by the last program of each output tile.

Each of a tile's `split_k` programs writes its float32 partial sum to its own slice of a workspace,
then counts itself in on the tile's arrival counter. The program that arrives last adds the partials
in split order (0, 1, ...), writes the output in its dtype and resets the counter to 0 for the next
launch. Compared with atomic adds into a zeroed output this
- gives the same bits on every run (atomic adds land in arrival order, so fp16 sums differed from
  run to run by ~1e-3 of the logits' scale, and greedy decoding could flip on near ties);
- needs no zeroing kernel before the product and, for bf16, no float32 buffer and cast after it;
- keeps the partials in float32 until the one final rounding.

The counters live in one zero-initialised int32 buffer per device, created on first use (outside any
CUDA graph capture: a graph captured before it exists would not hold its zeroing). Launches on one
stream run one after another and each leaves its counters at 0; two split-K launches running at the
same time on different streams of one device would share counters, which this module does not support.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_TILES = 1 << 16  # arrival counters per device: output tiles of one split-K launch

# How many partials the last program of a tile loads at once while it sums them, by the float32 elements of
# one partial a thread holds. Several in flight take one L2 round trip for several splits, but each costs
# that many registers. H100 (benchmarks/README.md, "Split-K merge"): the swapped GEMM's 8-warp 64x128 tile,
# 32 elements a thread, took 163.7 us with 4 against 100.2 with 1 (28672x8192, M=64, 2 splits; 8192x28672
# with 4 splits 139.8 against 86.9); its 4-warp 32x64 tile, 16 a thread, 28.1 with 4 against 33.2 with 1
# (4096x11008, M=64, 4 splits).
MERGE_UNROLL_TABLE = ((16, 4), (1 << 30, 1))  # (most elements a thread, partials at once)
MERGE_UNROLL = tl.constexpr(MERGE_UNROLL_TABLE[0][1])  # small tiles: the GEMV's, the decode attention's chunks


def merge_unroll(tile_elements: int, threads: int) -> int:
    """Partials summed at once (`gather`) for a (BM, BN) tile of `tile_elements` over `threads` threads."""
    per_thread = -(-tile_elements // threads)
    return next(unroll for most, unroll in MERGE_UNROLL_TABLE if per_thread <= most)


@triton.jit
def publish(acc, ws_ptr, pid_k, M, N, offs_m, offs_n, mask):
    """Write this split's (BM, BN) float32 `acc` of output rows `offs_m` (BM, 1) and columns `offs_n` (1, BN),
    where `mask` holds, to its slice of the (split_k, M, N) workspace."""
    tl.store(ws_ptr + pid_k * M * N + offs_m * N + offs_n, acc, mask=mask)


@triton.jit
def arrive(count_ptr, tile):
    """Count this program in on the tile's counter, after its partials are published: the number of
    programs that arrived before it (the last one sees split_k - 1)."""
    tl.debug_barrier()  # every thread's partial is written before the counter says so
    return tl.atomic_add(count_ptr + tile, 1, sem="acq_rel")  # release our partials, acquire the others'


@triton.jit
def gather(ws_ptr, split_k, M, N, offs_m, offs_n, mask, total, UNROLL: tl.constexpr):
    """`total` (zeros, (BM, BN) float32) plus every split's partial where `mask` holds, in split order
    (0, 1, ...), whoever finished first."""
    for s0 in range(0, split_k, UNROLL):
        # UNROLL partials loaded before any is added (`merge_unroll`): one L2 round trip for each UNROLL
        # splits, not one a split. .cg reads from L2, where the other programs' writes are, never
        # from a stale L1 line. Splits past split_k read as 0.0, which adds nothing (the split test as
        # a tensor: Triton's CPU interpreter rejects a scalar & tensor mask).
        parts = ()
        for d in tl.static_range(UNROLL):
            in_range = mask & (offs_n * 0 + s0 + d < split_k)
            parts = parts + (tl.load(ws_ptr + (s0 + d) * M * N + offs_m * N + offs_n, mask=in_range, other=0.0,
                                     cache_modifier=".cg"),)
        for d in tl.static_range(UNROLL):
            total += parts[d]
    return total


@triton.jit
def release(count_ptr, tile):
    """Reset the tile's counter for the next launch (by its last program, after gathering)."""
    tl.atomic_xchg(count_ptr + tile, 0)


@triton.jit
def store_partial(acc, y_ptr, ws_ptr, count_ptr, tile, pid_k, split_k, M, N, offs_m, offs_n, stride_ym,
                  MERGE_UNROLL: tl.constexpr):
    """Write this split's (BM, BN) float32 `acc` of output rows `offs_m` (BM, 1) and columns `offs_n`
    (1, BN); the last of the tile's `split_k` programs to arrive sums all splits (MERGE_UNROLL at once)
    and writes y."""
    mask = (offs_m < M) & (offs_n < N)
    publish(acc, ws_ptr, pid_k, M, N, offs_m, offs_n, mask)
    if arrive(count_ptr, tile) == split_k - 1:
        total = gather(ws_ptr, split_k, M, N, offs_m, offs_n, mask, tl.zeros_like(acc), MERGE_UNROLL)
        tl.store(y_ptr + offs_m * stride_ym + offs_n, total.to(y_ptr.dtype.element_ty), mask=mask)
        release(count_ptr, tile)


_counters: dict[torch.device, torch.Tensor] = {}  # per device: MAX_TILES int32, zero between launches


def arrival_counters(device: torch.device) -> torch.Tensor:
    """The device's zeroed arrival counters, created on the first split-K launch there."""
    counters = _counters.get(device)
    if counters is None:
        assert not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()), (
            "the first split-K W4A16 product on a device must run before any CUDA graph capture (warm up first)"
        )
        counters = _counters[device] = torch.zeros(MAX_TILES, dtype=torch.int32, device=device)
    return counters


def split_buffers(m: int, n: int, x: torch.Tensor, split_k: int, tiles: int, dtype: torch.dtype | None = None,
                  out_features: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output (M, out_features) in `dtype` (defaults: N, x's dtype), float32 workspace (split_k, M, N) of the
    products' partial sums, arrival counters)."""
    assert tiles <= MAX_TILES, f"{tiles} output tiles exceed the {MAX_TILES} arrival counters: use larger tiles"
    y = torch.empty((m, out_features or n), device=x.device, dtype=dtype or x.dtype)
    if split_k == 1:
        return y, y, y  # unused: a single split stores its tile directly
    workspace = torch.empty((split_k, m, n), device=x.device, dtype=torch.float32)
    return y, workspace, arrival_counters(x.device)  # a CUDA tensor's device always names its index
