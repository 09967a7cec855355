"""The split-slot decode attention kernel against a float64 softmax reference (interpreter on CPU)."""
import math

import pytest
import torch

import triton_kernels
from triton_kernels.decode_attention import BLOCK_S, NewToken, decode_attention, split_count, warps_for
from triton_kernels.splitk import arrival_counters

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(q, k, v, mask, scale):
    """float64 softmax(q k^T * scale) v over the allowed slots, (B, 1, H, D); a row with none allowed is 0."""
    group = q.shape[1] // k.shape[1]
    keys = k.double().repeat_interleave(group, dim=1)  # (B, H, S, D)
    values = v.double().repeat_interleave(group, dim=1)
    scores = q.double() @ keys.transpose(-1, -2) * scale  # (B, H, 1, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return (weights @ values).transpose(1, 2)  # (B, 1, H, D)


def inputs(batch, heads, kv_heads, slots, head_dim, dtype, seed=0, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, 1, head_dim, generator=gen).to(device, dtype)
    k = torch.randn(batch, kv_heads, slots, head_dim, generator=gen).to(device, dtype)
    v = torch.randn(batch, kv_heads, slots, head_dim, generator=gen).to(device, dtype)
    return q, k, v


def padded_mask(batch, slots, device=DEVICE):
    """Sequence b: left padding of 3 b slots, then filled slots, then empty cache slots (the last third)."""
    mask = torch.zeros(batch, 1, 1, slots, dtype=torch.bool)
    for b in range(batch):
        mask[b, ..., 3 * b : slots - slots // 3] = True
    return mask.to(device)


def relative_error(out, expected):
    return float((out.double() - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize(
    "batch, heads, kv_heads, slots, head_dim, sms",
    [
        (1, 4, 4, 200, 64, 8),  # multi-head, several chunks
        (2, 8, 2, 300, 128, 16),  # grouped-query: 4 query heads a kv head
        (3, 6, 3, 37, 80, 1),  # one chunk (9 programs fill 1 SM), head_dim not a power of two, under one block
        (2, 16, 1, 130, 32, 64),  # multi-query, 16 rows a tile; more chunks wanted than blocks
        (1, 2, 1, 2 * BLOCK_S, 16, 8),  # slots a multiple of the block
        (1, 4, 2, 700, 16, 64),  # 11 chunks: the merge reads them in three rounds, the last partial
    ],
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("masked", [True, False])
def test_decode_attention_matches_float64(batch, heads, kv_heads, slots, head_dim, sms, dtype, masked):
    q, k, v = inputs(batch, heads, kv_heads, slots, head_dim, dtype)
    mask = padded_mask(batch, slots) if masked else None
    scale = 1 / math.sqrt(head_dim)
    out = decode_attention(q, k, v, mask, scale, sms=sms)
    assert out.shape == (batch, 1, heads, head_dim) and out.dtype == dtype
    tolerance = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert relative_error(out, reference(q, k, v, mask, scale)) < tolerance
    assert not arrival_counters(q.device).any(), "every merge leaves its counter at 0"


def test_merge_rounds_when_early_chunks_are_empty_and_a_late_chunk_holds_the_max():
    # 11 chunks (three merge rounds): the first round's chunks have no allowed slot (their running max
    # stays -inf), and the keys of the last chunk are scaled up so that its scores raise the running max
    # after earlier rounds were summed: the merge must rescale those sums.
    q, k, v = inputs(1, 4, 2, 700, 16, torch.float16, seed=3)
    k[:, :, 640:] *= 4
    mask = torch.zeros(1, 1, 1, 700, dtype=torch.bool, device=q.device)
    mask[..., 300:] = True
    out = decode_attention(q, k, v, mask, 0.25, sms=64)
    assert relative_error(out, reference(q, k, v, mask, 0.25)) < 2e-3


def test_fully_masked_sequence_gives_zeros_and_a_broadcast_mask_is_read_per_slot():
    q, k, v = inputs(2, 4, 2, 150, 32, torch.float16)
    mask = padded_mask(2, 150)
    mask[1] = False  # sequence 1 may attend nothing
    out = decode_attention(q, k, v, mask, 0.2, sms=4)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert relative_error(out[:1], reference(q[:1], k[:1], v[:1], mask[:1], 0.2)) < 2e-3
    shared = padded_mask(1, 150)  # (1, 1, 1, S): one mask for both sequences, as an expanded view
    out = decode_attention(q, k, v, shared.expand(2, 1, 1, 150), 0.2, sms=4)
    assert relative_error(out, reference(q, k, v, shared, 0.2)) < 2e-3


def test_masked_off_slots_are_never_read():
    """NaN in every slot the mask excludes: a masked load that still read memory would poison the output."""
    q, k, v = inputs(1, 4, 4, 256, 32, torch.float16)
    mask = padded_mask(1, 256)
    k[..., ~mask[0, 0, 0], :] = float("nan")
    v[..., ~mask[0, 0, 0], :] = float("nan")
    out = decode_attention(q, k, v, mask, 0.2, sms=8)
    assert torch.isfinite(out).all()
    clean = mask[0, 0, 0]
    expected = reference(q, k[:, :, clean], v[:, :, clean], None, 0.2)
    assert relative_error(out, expected) < 2e-3


def test_strided_query_as_transformers_passes_it():
    """transformers hands the query as a transposed view of the projection's (B, 1, H, D) output."""
    flat = torch.randn(2, 1, 8, 64, generator=torch.Generator().manual_seed(1)).to(DEVICE, torch.float16)
    q = flat.transpose(1, 2)  # (B, H, 1, D), not contiguous
    _, k, v = inputs(2, 8, 4, 100, 64, torch.float16)
    out = triton_kernels.decode_attention(q, k, v, None, 0.125)  # through the custom op
    assert relative_error(out, reference(q, k, v, None, 0.125)) < 2e-3


def rotate(x, cos, sin):
    """transformers' apply_rotary_pos_emb for one tensor (B, H, 1, D), cos and sin (B, 1, D), in float64."""
    half = x.shape[-1] // 2
    cos, sin = cos.double().unsqueeze(1), sin.double().unsqueeze(1)
    return x.double() * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1).double() * sin


def new_token(batch, kv_heads, head_dim, slot, dtype, rotary=True, device=DEVICE, seed=5):
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(batch, kv_heads, 1, head_dim, generator=gen).to(device, dtype)
    v = torch.randn(batch, kv_heads, 1, head_dim, generator=gen).to(device, dtype)
    angles = torch.randn(batch, 1, head_dim // 2, generator=gen) * 3
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(device, dtype) if rotary else None
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(device, dtype) if rotary else None
    return NewToken(k, v, torch.tensor(slot, device=device), cos, sin)


@pytest.mark.parametrize(
    "batch, heads, kv_heads, slots, head_dim, slot, sms",
    [
        (1, 4, 4, 200, 64, 130, 8),  # several chunks; the slot inside the third
        (2, 8, 2, 300, 128, 0, 16),  # the first slot: the new token alone
        (2, 8, 2, 300, 128, 299, 16),  # the last slot
        (3, 6, 3, 37, 80, 20, 1),  # one chunk; head_dim not a power of two
        (1, 4, 2, 700, 16, 650, 64),  # 11 chunks, most before the slot
    ],
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("masked, rotary", [(True, True), (False, True), (True, False)])
def test_new_token_is_rotated_written_and_attended(batch, heads, kv_heads, slots, head_dim, slot, sms, dtype,
                                                    masked, rotary):
    q, k, v = inputs(batch, heads, kv_heads, slots, head_dim, dtype)
    new = new_token(batch, kv_heads, head_dim, slot, dtype, rotary)
    mask = padded_mask(batch, slots) if masked else None
    if mask is not None:
        mask[..., slot] = True  # a token always sees itself
    k0, v0 = k.clone(), v.clone()
    out = decode_attention(q, k, v, mask, 0.1, sms=sms, new=new)

    q_rot = rotate(q, new.cos, new.sin) if rotary else q.double()
    k_rot = rotate(new.k, new.cos, new.sin) if rotary else new.k.double()  # (B, H_kv, 1, D)
    tolerance = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert (k[:, :, slot].double() - k_rot[:, :, 0]).abs().max() <= tolerance * k_rot.abs().max()
    assert torch.equal(v[:, :, slot], new.v[:, :, 0])
    others = torch.arange(slots, device=k.device) != slot
    assert torch.equal(k[:, :, others], k0[:, :, others]) and torch.equal(v[:, :, others], v0[:, :, others])
    seen = torch.arange(slots, device=k.device) <= slot  # (S,) the later slots hold no token yet
    seen = seen.view(1, 1, 1, slots) & (mask if mask is not None else True)
    keys, values = k0.double(), v0.double()
    keys[:, :, slot], values[:, :, slot] = k_rot[:, :, 0], new.v[:, :, 0].double()
    assert relative_error(out, reference(q_rot, keys, values, seen, 0.1)) < tolerance
    assert not arrival_counters(q.device).any()


def test_new_token_past_the_cache_end_writes_nothing_and_gives_nan():
    q, k, v = inputs(1, 4, 4, 64, 32, torch.float16)
    k0, v0 = k.clone(), v.clone()
    out = triton_kernels.decode_attention(q, k, v, None, 0.1, new=new_token(1, 4, 32, 64, torch.float16))
    assert out.isnan().all()
    assert torch.equal(k, k0) and torch.equal(v, v0)


def test_split_count_fills_the_gpu_but_keeps_a_block_a_chunk():
    assert split_count(1, 32, 384, 132) == 6  # 9 wanted for two programs a SM, 6 blocks of slots
    assert split_count(1, 32, 4096, 132) == 9
    assert split_count(32, 32, 4096, 132) == 1  # 1024 (sequence, head) pairs already fill the GPU
    assert split_count(8, 32, 384, 132) == 1  # 256 do too: a merge would cost more than it hides
    assert split_count(8, 8, 4096, 132) == 5  # 64 do not
    assert split_count(1, 8, 10, 132) == 1


def test_more_warps_only_for_new_token_calls_with_short_loops():
    assert warps_for(True, BLOCK_S) == warps_for(True, 2 * BLOCK_S) == 8  # 7B batch 1: one block a program
    assert warps_for(True, 13 * BLOCK_S) == 4  # 70B batch 8, 4096 slots
    assert warps_for(False, BLOCK_S) == 4


def test_bad_inputs_are_refused_with_the_reason():
    q, k, v = inputs(1, 6, 4, 64, 32, torch.float16)
    with pytest.raises(AssertionError, match="do not share"):
        decode_attention(q, k, v, None, 0.2)
    q, k, v = inputs(1, 4, 4, 64, 32, torch.float16)
    with pytest.raises(AssertionError, match="must be bool"):
        decode_attention(q, k, v, torch.zeros(1, 1, 1, 64, device=DEVICE), 0.2)
    with pytest.raises(AssertionError, match="one query token"):
        decode_attention(q.expand(1, 4, 2, 32), k, v, None, 0.2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("batch, heads, kv_heads, slots", [(1, 32, 32, 384), (8, 32, 8, 4096), (32, 32, 32, 384)])
def test_decode_attention_at_model_sizes_on_cuda(batch, heads, kv_heads, slots):
    q, k, v = inputs(batch, heads, kv_heads, slots, 128, torch.float16, device="cuda")
    mask = padded_mask(batch, slots, device="cuda")
    out = triton_kernels.decode_attention(q, k, v, mask, 128**-0.5)
    assert relative_error(out, reference(q, k, v, mask, 128**-0.5)) < 2e-3
    again = triton_kernels.decode_attention(q, k, v, mask, 128**-0.5)
    assert torch.equal(out, again), "chunks merge in a fixed order: the same bits every run"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("batch, heads, kv_heads, slots, slot", [(1, 32, 32, 384, 200), (8, 32, 8, 4096, 3000)])
def test_new_token_at_model_sizes_on_cuda(batch, heads, kv_heads, slots, slot):
    q, k, v = inputs(batch, heads, kv_heads, slots, 128, torch.float16, device="cuda")
    new = new_token(batch, kv_heads, 128, slot, torch.float16, device="cuda")
    mask = padded_mask(batch, slots, device="cuda")
    mask[..., slot] = True
    k0, v0 = k.clone(), v.clone()
    out = triton_kernels.decode_attention(q, k, v, mask, 128**-0.5, new=new)
    keys, values = k0.double(), v0.double()
    keys[:, :, slot] = rotate(new.k, new.cos, new.sin)[:, :, 0]
    values[:, :, slot] = new.v[:, :, 0].double()
    seen = mask & (torch.arange(slots, device="cuda") <= slot)
    assert relative_error(out, reference(rotate(q, new.cos, new.sin), keys, values, seen, 128**-0.5)) < 2e-3
    assert (k[:, :, slot].double() - keys[:, :, slot]).abs().max() < 1e-2
    k.copy_(k0), v.copy_(v0)
    assert torch.equal(triton_kernels.decode_attention(q, k, v, mask, 128**-0.5, new=new), out)
