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

With a `NewToken` the kernel also does the two steps a decoder layer runs before its attention, which
are otherwise two small kernels a layer (the rotary embedding, with the keys' cache write, and the
values' cache write): it rotates q and the new token's key by (cos, sin), writes that key and the new
value into the cache at the token's slot, and attends over the cached slots before that slot plus the
new token, whose key and value it holds in registers. No program reads the slot being written, so the
write needs no ordering with the reads; chunk 0 writes it and starts its state from the new token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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
# Warps a program (`benchmarks/attention.py --warps 4,8`, results/attention_*_new_token.json; H100, us
# at 4 -> 8 warps). The new token's extra work (rotary embedding, its score, the cache write) spreads over
# more warps where a program reads few blocks; plain calls and programs with long loops lose from them.
FEW_BLOCKS = 2  # 64-slot blocks a program, at most, for the rule below
NEW_TOKEN_FEW_BLOCKS_WARPS = 8  # 7B batch 1, 384 slots: 9.1 -> 8.8 (256 filled), 10.0 -> 9.3 (384); 70B batch 1: 7.9 -> 7.2
DEFAULT_WARPS = 4  # plain 7B batch 1: 7.7 -> 7.9; new token, 70B batch 8, 4096 slots (13 blocks a program): 40.2 -> 93.1


def warps_for(new_token: bool, slots_per_program: int) -> int:
    return NEW_TOKEN_FEW_BLOCKS_WARPS if new_token and slots_per_program <= FEW_BLOCKS * BLOCK_S else DEFAULT_WARPS


@triton.jit
def _state_ptrs(ws_ptr, stats_ptr, tile, split, c, offs_g, offs_d, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    """Where chunk c of `tile` keeps its state: running max (BG,), running sum (BG,), output (BG, BD)."""
    stats = stats_ptr + (tile * split + c) * 2 * BLOCK_G + offs_g
    acc = ws_ptr + ((tile * split + c) * BLOCK_G + offs_g[:, None]) * BLOCK_D + offs_d[None, :]
    return stats, stats + BLOCK_G, acc


@triton.jit
def _chunk_state(ws_ptr, stats_ptr, tile, split, c, offs_g, offs_d, rows, BLOCK_G: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    """Chunk c's (running max (BG,), running sum (BG,), unnormalised output (BG, BD)); past `split`, and
    in the padding rows (not `rows`), a chunk with no slot (-inf, 0, 0). Read with .cg: from L2, where
    the other programs wrote them."""
    present = (offs_g * 0 + c < split) & rows  # the chunk test as a tensor (see splitk.py)
    m_ptrs, l_ptrs, acc_ptrs = _state_ptrs(ws_ptr, stats_ptr, tile, split, c, offs_g, offs_d, BLOCK_G, BLOCK_D)
    m = tl.load(m_ptrs, mask=present, other=float("-inf"), cache_modifier=".cg")
    l = tl.load(l_ptrs, mask=present, other=0.0, cache_modifier=".cg")
    acc = tl.load(acc_ptrs, mask=present[:, None], other=0.0, cache_modifier=".cg")
    return m, l, acc


@triton.jit
def _merge_chunks(ws_ptr, stats_ptr, o_rows, tile, split, offs_g, offs_d, rows, out_mask, BLOCK_G: tl.constexpr,
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
            states = states + (_chunk_state(ws_ptr, stats_ptr, tile, split, c0 + d, offs_g, offs_d, rows, BLOCK_G,
                                            BLOCK_D),)
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
def _load_rotated(row_ptrs, offs_d, mask, cos, sin, HALF: tl.constexpr, ROTARY: tl.constexpr):
    """Rows (R, BD) at row_ptrs (R, 1) + offs_d in float32, times cos plus rotate_half(rows) times sin
    when ROTARY (rotate_half(x) = (-x[HALF:], x[:HALF]), the Llama-family convention)."""
    x = tl.load(row_ptrs + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)  # (R, BD)
    if ROTARY:
        first_half = offs_d < HALF
        partner = tl.where(first_half, offs_d + HALF, offs_d - HALF)  # (BD,)
        rotated = tl.load(row_ptrs + partner[None, :], mask=mask, other=0.0).to(tl.float32)
        rotated = tl.where(first_half[None, :], -rotated, rotated)  # (R, BD) rotate_half(x)
        x = x * cos[None, :] + rotated * sin[None, :]
    return x


@triton.jit
def decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, o_ptr, ws_ptr, stats_ptr, count_ptr,
    new_k_ptr, new_v_ptr, cos_ptr, sin_ptr, slot_ptr,
    slots, kv_heads, slots_per_split, split, qk_scale,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_mb, stride_ms, stride_ob, stride_oh, stride_nkb, stride_nkh, stride_nvb, stride_nvh, stride_rb,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr, HAS_MASK: tl.constexpr, SPLIT: tl.constexpr, DOT_F32: tl.constexpr,
    NEW_TOKEN: tl.constexpr, ROTARY: tl.constexpr,
):
    tile = tl.program_id(0)  # (sequence, kv head)
    chunk = tl.program_id(1)
    b = tile // kv_heads
    h = tile % kv_heads
    offs_g = tl.arange(0, BLOCK_G)  # query heads h * GROUP + g
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    q_mask = (offs_g[:, None] < GROUP) & mask_d[None, :]
    cos = tl.zeros((BLOCK_D,), dtype=tl.float32)
    sin = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if ROTARY:
        cos = tl.load(cos_ptr + b * stride_rb + offs_d, mask=mask_d, other=0.0).to(tl.float32)  # (BD,)
        sin = tl.load(sin_ptr + b * stride_rb + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    q_rows = q_ptr + b * stride_qb + (h * GROUP + offs_g)[:, None] * stride_qh  # (BG, 1)
    q = _load_rotated(q_rows, offs_d, q_mask, cos, sin, HEAD_DIM // 2, ROTARY).to(k_ptr.dtype.element_ty)
    if DOT_F32:  # bf16 under the interpreter (see gemm._interpreter_bf16)
        q = q.to(tl.float32)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh

    m_i = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)  # running max of the scores (log2 units)
    l_i = tl.zeros((BLOCK_G,), dtype=tl.float32)  # running sum of exp2(score - m_i)
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)  # running sum of exp2(score - m_i) * v
    start = chunk * slots_per_split
    end = tl.minimum(start + slots_per_split, slots)
    if NEW_TOKEN:
        # Where the new token goes: the cached slots are the ones before it. It is a predicate of the
        # loads below, not a loop bound, so the loop's bounds stay the host's (the loop's first loads
        # are not held until this load returns).
        slot = tl.load(slot_ptr).to(tl.int32)
        one = tl.arange(0, 1)[:, None]  # (1, 1): the new token's row
        row = mask_d[None, :] & (one == 0)  # (1, BD)
        new_k = _load_rotated(new_k_ptr + b * stride_nkb + h * stride_nkh + one, offs_d, row, cos, sin,
                              HEAD_DIM // 2, ROTARY).to(k_ptr.dtype.element_ty)  # (1, BD)
        new_v = tl.load(new_v_ptr + b * stride_nvb + h * stride_nvh + one + offs_d[None, :], mask=row, other=0.0)
        # The tests as (1, 1) tensors (see splitk.py): chunk 0, and a slot inside the cache (past its end
        # nothing is written and the output is NaN, below).
        in_cache = one + slot < slots
        starts_here = (one + chunk == 0) & in_cache
        column = one + offs_d[None, :]  # (1, BD)
        tl.store(k_base + slot * stride_ks + column, new_k, mask=row & starts_here)
        tl.store(v_base + slot * stride_vs + column, new_v.to(v_ptr.dtype.element_ty), mask=row & starts_here)
        if HAS_MASK:
            sees_itself = tl.load(mask_ptr + b * stride_mb + (one + slot) * stride_ms, mask=starts_here, other=0)
            starts_here = starts_here & (sees_itself != 0)
        # Chunk 0 starts from the new token: m = its score, l = 1, acc = its value.
        score = tl.sum(q.to(tl.float32) * new_k.to(tl.float32), axis=1) * qk_scale  # (BG,)
        starts_row = tl.max(starts_here.to(tl.int32), axis=1) != 0  # (1,)
        m_i = tl.where(starts_row, score, m_i)
        l_i = tl.where(starts_row, 1.0, l_i)
        acc = tl.where(starts_here, new_v.to(tl.float32) + acc, acc)  # (BG, BD)
        l_i = tl.where(tl.max(in_cache.to(tl.int32), axis=1) != 0, l_i, float("nan"))
    for s0 in range(start, end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)  # (BS,)
        valid = offs_s < end
        if NEW_TOKEN:
            valid = valid & (offs_s < slot)
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
        rows = offs_g < GROUP  # the padding rows' states are never read: not written either
        tl.store(m_ptrs, m_i, mask=rows)
        tl.store(l_ptrs, l_i, mask=rows)
        tl.store(acc_ptrs, acc, mask=rows[:, None])
        tl.debug_barrier()  # every thread's state is written before the counter says so
        arrived = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel")  # release ours, acquire the others'
        if arrived == split - 1:
            _merge_chunks(ws_ptr, stats_ptr, o_rows, tile, split, offs_g, offs_d, rows, q_mask, BLOCK_G, BLOCK_D)
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


@dataclass(frozen=True)
class NewToken:
    """The step's own token, which the kernel writes into the cache and attends to (module docstring).

    k, v (batch, kv_heads, 1, head_dim): its key, before the rotary embedding, and value; slot: a
    one-element integer tensor on the device, the cache slot it goes to (the same for every sequence,
    as in a static cache); cos, sin (batch, 1, head_dim) or None (no rotary embedding): the rotation of
    its position, applied to q and k as x * cos + rotate_half(x) * sin.
    """

    k: torch.Tensor
    v: torch.Tensor
    slot: torch.Tensor
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None


def _check_new_token(new: NewToken, q: torch.Tensor, k: torch.Tensor) -> None:
    batch, _, _, head_dim = q.shape
    shape = (batch, k.shape[1], 1, head_dim)
    assert new.k.shape == new.v.shape == shape, f"new k {tuple(new.k.shape)}, v {tuple(new.v.shape)}: expected {shape}"
    assert new.k.dtype == new.v.dtype == q.dtype, f"new k and v must be {q.dtype}"
    assert new.k.stride(-1) == new.v.stride(-1) == 1, "the new k and v must be contiguous along head_dim"
    assert new.slot.numel() == 1 and not new.slot.is_floating_point(), "slot must be a one-element integer tensor"
    assert (new.cos is None) == (new.sin is None), "cos and sin come together"
    if new.cos is not None:
        assert head_dim % 2 == 0, f"the rotary embedding needs an even head_dim, got {head_dim}"
        assert new.cos.shape == new.sin.shape == (batch, 1, head_dim), (
            f"cos {tuple(new.cos.shape)}, sin {tuple(new.sin.shape)}: expected {(batch, 1, head_dim)}"
        )
        assert new.cos.stride() == new.sin.stride() and new.cos.stride(-1) == 1, "cos and sin: one contiguous layout"


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     scale: float | None = None, sms: int = 132, num_warps: int | None = None,
                     programs_per_sm: int = PROGRAMS_PER_SM, new: NewToken | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v for one query token per sequence.

    q (batch, heads, 1, head_dim); k, v (batch, kv_heads, slots, head_dim), heads a multiple of kv_heads
    (query head i reads kv head i // (heads / kv_heads)); mask None (every slot) or bool, broadcastable
    to (batch, 1, 1, slots), True where a slot may be attended. Returns (batch, 1, heads, head_dim), the
    layout transformers' attention functions return.

    With `new`, q comes before the rotary embedding; the kernel rotates it and the new key, writes the
    new key and value into k and v at `new.slot`, and attends over the slots before it that the mask
    allows plus that slot (the later slots hold no token yet). A slot past the cache's end writes
    nothing and gives NaN.
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
    if new is not None:
        _check_new_token(new, q, k)
    rotary = new is not None and new.cos is not None
    new_k, new_v, slot = (new.k, new.v, new.slot) if new is not None else (q, q, q)  # q: unused
    cos, sin = (new.cos, new.sin) if rotary else (q, q)
    decode_attention_kernel[(tiles, split)](
        q, k, v, mask_arg, out, ws, stats, counters,
        new_k, new_v, cos, sin, slot,
        slots, kv_heads, slots_per_split, split, scale * LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        mask.stride(0) if mask is not None else 0, mask.stride(3) if mask is not None else 0,
        out.stride(0), out.stride(2), new_k.stride(0), new_k.stride(1), new_v.stride(0), new_v.stride(1),
        cos.stride(0),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_G=block_g, BLOCK_D=block_d, BLOCK_S=BLOCK_S,
        HAS_MASK=mask is not None, SPLIT=split > 1, DOT_F32=_interpreter_bf16(q), NEW_TOKEN=new is not None,
        ROTARY=rotary, num_warps=num_warps or warps_for(new is not None, slots_per_split),
    )
    return out
