"""Attention of one new query token per sequence over a KV cache (decoding), split over the cache slots.

A decode step's attention reads the whole live KV cache for a single query row per head. A prefill
kernel (one program per (sequence, head), 64 query rows a tile) then runs batch x heads programs, 32 at
batch 1 on a 7B model, each streaming every slot in turn: a latency-bound chain on a GPU of 132 SMs.
Here (flash-decoding) the slots are cut into `split` chunks and each (sequence, kv head, chunk) is one
program, which
- takes the G = heads / kv_heads query heads that share its kv head (grouped-query attention) as the
  rows of one (BLOCK_G, BLOCK_D) tile, padded to the 16 rows a tensor-core product needs;
- loads only the slots the boolean mask allows: a masked-off load moves no bytes, so the empty slots
  of a static cache cost a mask read;
- keeps the online-softmax state (running max m, running sum l, unnormalised output) in float32.
The chunks meet as in `splitk.py`: each program writes its state to a workspace and counts itself in
on its (sequence, kv head) counter; the last to arrive merges the states in chunk order (the same
bits on every run) and writes the output. A query whose every slot is masked gets zeros.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .gemm import _interpreter_bf16
from .splitk import MAX_TILES, MERGE_UNROLL, arrival_counters

LOG2E = 1.4426950408889634  # exp(x) = exp2(x * log2 e): the scores are scaled once, exp2 is one instruction
BLOCK_S = 64  # cache slots a loop iteration: a (BLOCK_D, 64) fp16 key tile of 16 KB for head_dim 128
MIN_ROWS = 16  # query rows of a tile: tl.dot's smallest M
# When to split, measured on the H100 (`benchmarks/attention.py --sweep 1,4,8`, results/attention_*.json):
# - a split costs the merge (chunk states written, an atomic, the last program's reads): 7B heads at
#   batch 8 (256 (sequence, head) programs, 256 of 384 slots filled) took 19.8 us unsplit, 26.2 in two
#   chunks. So only a grid of fewer (sequence, kv head) programs than SMs is split;
# - then to PROGRAMS_PER_SM programs a SM: 7B batch 1 over 1024 of 4096 slots took 28.4, 21.3, 25.4,
#   31.2 us at 1, 2, 4, 8 a SM; 70B heads (8 kv heads) at batch 8, 43.1, 36.2, 41.5, 44.0.
PROGRAMS_PER_SM = 2


@triton.jit
def _state_ptrs(ws_ptr, stats_ptr, tile, split, c, offs_g, offs_d, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    """Where chunk c of `tile` keeps its state: running max (BG,), running sum (BG,), output (BG, BD)."""
    stats = stats_ptr + (tile * split + c) * 2 * BLOCK_G + offs_g
    acc = ws_ptr + ((tile * split + c) * BLOCK_G + offs_g[:, None]) * BLOCK_D + offs_d[None, :]
    return stats, stats + BLOCK_G, acc


@triton.jit
def _chunk_state(ws_ptr, stats_ptr, tile, split, c, offs_g, offs_d, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    """Chunk c's (running max (BG,), running sum (BG,), unnormalised output (BG, BD)); past `split`, a
    chunk with no slot (-inf, 0, 0). Read with .cg: from L2, where the other programs wrote them."""
    present = offs_g * 0 + c < split  # the chunk test as a tensor (see splitk.py)
    m_ptrs, l_ptrs, acc_ptrs = _state_ptrs(ws_ptr, stats_ptr, tile, split, c, offs_g, offs_d, BLOCK_G, BLOCK_D)
    m = tl.load(m_ptrs, mask=present, other=float("-inf"), cache_modifier=".cg")
    l = tl.load(l_ptrs, mask=present, other=0.0, cache_modifier=".cg")
    acc = tl.load(acc_ptrs, mask=present[:, None], other=0.0, cache_modifier=".cg")
    return m, l, acc


@triton.jit
def _merge_chunks(ws_ptr, stats_ptr, o_rows, tile, split, offs_g, offs_d, out_mask, BLOCK_G: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    """Merge the `split` chunk states of `tile` in chunk order and write the normalised output. One pass:
    MERGE_UNROLL chunks' states are loaded before any is used (one L2 round trip for each MERGE_UNROLL
    chunks), and the running sums are rescaled whenever a later chunk raises the running max."""
    m = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)  # running max of every chunk so far
    total = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)  # sum of exp2(m_c - m) * acc_c
    denom = tl.zeros((BLOCK_G,), dtype=tl.float32)  # sum of exp2(m_c - m) * l_c
    for c0 in range(0, split, MERGE_UNROLL):
        states = ()
        for d in tl.static_range(MERGE_UNROLL):
            states = states + (_chunk_state(ws_ptr, stats_ptr, tile, split, c0 + d, offs_g, offs_d, BLOCK_G, BLOCK_D),)
        m_new = m
        for d in tl.static_range(MERGE_UNROLL):
            m_new = tl.maximum(m_new, states[d][0])
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # (BG,) no slot yet: every weight below is 0
        rescale = tl.exp2(m - m_use)  # (BG,) 0 while m is -inf (the sums are 0 then)
        total = total * rescale[:, None]
        denom = denom * rescale
        for d in tl.static_range(MERGE_UNROLL):
            m_c, l_c, acc_c = states[d]
            weight = tl.exp2(m_c - m_use)  # (BG,) 0 for a chunk with no slot
            denom += weight * l_c
            total += weight[:, None] * acc_c
        m = m_new
    out = total / tl.where(denom == 0.0, 1.0, denom)[:, None]  # (BG, BD)
    tl.store(o_rows, out.to(o_rows.dtype.element_ty), mask=out_mask)


@triton.jit
def decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, o_ptr, ws_ptr, stats_ptr, count_ptr,
    slots, kv_heads, slots_per_split, split, qk_scale,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_mb, stride_ms, stride_ob, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr, HAS_MASK: tl.constexpr, SPLIT: tl.constexpr, DOT_F32: tl.constexpr,
):
    tile = tl.program_id(0)  # (sequence, kv head)
    chunk = tl.program_id(1)
    b = tile // kv_heads
    h = tile % kv_heads
    offs_g = tl.arange(0, BLOCK_G)  # query heads h * GROUP + g
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    q_mask = (offs_g[:, None] < GROUP) & mask_d[None, :]
    q = tl.load(q_ptr + b * stride_qb + (h * GROUP + offs_g)[:, None] * stride_qh + offs_d[None, :],
                mask=q_mask, other=0.0)  # (BG, BD)
    if DOT_F32:  # bf16 under the interpreter (see gemm._interpreter_bf16)
        q = q.to(tl.float32)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh

    m_i = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)  # running max of the scores (log2 units)
    l_i = tl.zeros((BLOCK_G,), dtype=tl.float32)  # running sum of exp2(score - m_i)
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)  # running sum of exp2(score - m_i) * v
    start = chunk * slots_per_split
    end = tl.minimum(start + slots_per_split, slots)
    for s0 in range(start, end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)  # (BS,)
        valid = offs_s < end
        if HAS_MASK:
            allowed = tl.load(mask_ptr + b * stride_mb + offs_s * stride_ms, mask=valid, other=0)
            valid = valid & (allowed != 0)
        # Both tiles' loads go out together: one memory round trip a block, not two. Masked-off slots
        # move no bytes; a block with none allowed still runs its (cheap) arithmetic on zeros rather
        # than test for that first (a block-wide reduction and a branch before the loads).
        k = tl.load(k_base + offs_s[None, :] * stride_ks + offs_d[:, None],
                    mask=valid[None, :] & mask_d[:, None], other=0.0)  # (BD, BS)
        v = tl.load(v_base + offs_s[:, None] * stride_vs + offs_d[None, :],
                    mask=valid[:, None] & mask_d[None, :], other=0.0)  # (BS, BD)
        if DOT_F32:
            k, v = k.to(tl.float32), v.to(tl.float32)
        scores = tl.dot(q, k) * qk_scale  # (BG, BS) float32, log2 units
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))  # (BG,) -inf while no slot has been allowed
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # then every p and alpha below is 0
        p = tl.exp2(scores - m_use[:, None])  # (BG, BS)
        alpha = tl.exp2(m_i - m_use)  # (BG,) 0 until the first allowed slot (m_i = -inf)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)  # (BG, BD)
        m_i = m_new

    o_rows = o_ptr + b * stride_ob + (h * GROUP + offs_g)[:, None] * stride_oh + offs_d[None, :]
    if SPLIT:
        m_ptrs, l_ptrs, acc_ptrs = _state_ptrs(ws_ptr, stats_ptr, tile, split, chunk, offs_g, offs_d, BLOCK_G, BLOCK_D)
        tl.store(m_ptrs, m_i)
        tl.store(l_ptrs, l_i)
        tl.store(acc_ptrs, acc)
        tl.debug_barrier()  # every thread's state is written before the counter says so
        arrived = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel")  # release ours, acquire the others'
        if arrived == split - 1:
            _merge_chunks(ws_ptr, stats_ptr, o_rows, tile, split, offs_g, offs_d, q_mask, BLOCK_G, BLOCK_D)
            tl.atomic_xchg(count_ptr + tile, 0)  # ready for the next launch
    else:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(o_rows, out.to(o_ptr.dtype.element_ty), mask=q_mask)


def split_count(batch: int, kv_heads: int, slots: int, sms: int, programs_per_sm: int = PROGRAMS_PER_SM) -> int:
    """Chunks of the cache per (sequence, kv head): 1 where the (sequence, kv head) programs alone fill
    the SMs, else enough for `programs_per_sm` a SM, at least one 64-slot block a chunk."""
    if batch * kv_heads >= sms:
        return 1
    wanted = triton.cdiv(programs_per_sm * sms, batch * kv_heads)
    return max(1, min(wanted, triton.cdiv(slots, BLOCK_S)))


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     scale: float | None = None, sms: int = 132, num_warps: int = 4,
                     programs_per_sm: int = PROGRAMS_PER_SM) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v for one query token per sequence.

    q (batch, heads, 1, head_dim); k, v (batch, kv_heads, slots, head_dim), heads a multiple of kv_heads
    (query head i reads kv head i // (heads / kv_heads)); mask None (every slot) or bool, broadcastable
    to (batch, 1, 1, slots), True where a slot may be attended. Returns (batch, 1, heads, head_dim), the
    layout transformers' attention functions return.
    """
    batch, heads, q_len, head_dim = q.shape
    kv_heads, slots = k.shape[1], k.shape[2]
    assert q_len == 1, f"decode attention takes one query token per sequence, got {q_len}"
    assert k.shape == v.shape == (batch, kv_heads, slots, head_dim), f"k {tuple(k.shape)}, v {tuple(v.shape)}"
    assert heads % kv_heads == 0, f"{heads} query heads do not share {kv_heads} kv heads evenly"
    assert q.dtype == k.dtype == v.dtype, f"q {q.dtype}, k {k.dtype}, v {v.dtype}: one dtype expected"
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1, "q, k and v must be contiguous along head_dim"
    assert batch * kv_heads <= MAX_TILES, f"{batch * kv_heads} (sequence, kv head) pairs exceed {MAX_TILES}"
    group = heads // kv_heads
    if mask is not None:
        assert mask.dtype == torch.bool, f"mask must be bool (True: attend), got {mask.dtype}"
        assert mask.dim() == 4 and mask.shape[1] == mask.shape[2] == 1 and mask.shape[-1] == slots, (
            f"mask {tuple(mask.shape)}: expected (batch or 1, 1, 1, {slots})"
        )
        mask = mask.expand(batch, 1, 1, slots)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    block_g = max(MIN_ROWS, triton.next_power_of_2(group))
    block_d = max(16, triton.next_power_of_2(head_dim))
    split = split_count(batch, kv_heads, slots, sms, programs_per_sm)
    slots_per_split = triton.cdiv(triton.cdiv(slots, split), BLOCK_S) * BLOCK_S
    split = triton.cdiv(slots, slots_per_split)  # no empty chunks
    out = torch.empty((batch, 1, heads, head_dim), device=q.device, dtype=q.dtype)
    tiles = batch * kv_heads
    if split > 1:
        ws = torch.empty((tiles, split, block_g, block_d), device=q.device, dtype=torch.float32)
        stats = torch.empty((tiles, split, 2, block_g), device=q.device, dtype=torch.float32)
        counters = arrival_counters(q.device)
    else:
        ws = stats = counters = out  # unused
    mask_arg = mask if mask is not None else q
    decode_attention_kernel[(tiles, split)](
        q, k, v, mask_arg, out, ws, stats, counters,
        slots, kv_heads, slots_per_split, split, scale * LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        mask.stride(0) if mask is not None else 0, mask.stride(3) if mask is not None else 0,
        out.stride(0), out.stride(2),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_G=block_g, BLOCK_D=block_d, BLOCK_S=BLOCK_S,
        HAS_MASK=mask is not None, SPLIT=split > 1, DOT_F32=_interpreter_bf16(q), num_warps=num_warps,
    )
    return out
