"""The GPTQ checkpoint layout (AutoGPTQ / GPTQModel format "gptq", what transformers and vLLM load):

    qweight  int32 (in * bits / 32, out)    integers packed along the input dimension
    qzeros   int32 (groups, out * bits / 32) zero points minus one, packed along the output dimension
    scales   fp16  (groups, out)
    g_idx    int32 (in,)                      the group of every input column

Packing is a little-endian bit stream in 32-bit words: value k occupies bits [k * bits, (k + 1) * bits)
of the stream. For 2, 4 and 8 bits a value never straddles a word; for 3 bits, 32 values fill three
words and values 10 and 21 of each run cross a word boundary (AutoGPTQ's 3-bit layout).
"""
from __future__ import annotations

import torch

from awq_core.quantizer import SCALE_DTYPE, QuantizedWeight

GPTQ_BITS = (2, 3, 4, 8)
ZERO_OFFSET = 1  # format "gptq" (v1) stores zero - 1; loaders add the 1 back


def check_gptq_bits(bits: int) -> None:
    if bits not in GPTQ_BITS:
        raise ValueError(f"bits={bits}: the GPTQ layout stores {GPTQ_BITS}-bit weights")


def packed_length(n: int, bits: int) -> int:
    """int32 words holding `n` values of `bits` bits; `n * bits` must fill whole words."""
    if (n * bits) % 32 != 0:
        raise ValueError(f"{n} values of {bits} bits do not fill whole 32-bit words: the GPTQ layout needs n * bits % 32 == 0")
    return n * bits // 32


def pack_bits(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Pack unsigned `bits`-wide integers along `dim` into int32 words (a little-endian bit stream)."""
    v = values.movedim(dim, -1).to(torch.int64)  # (..., n)
    n = v.shape[-1]
    words = packed_length(n, bits)
    assert int(v.min()) >= 0 and int(v.max()) < 2**bits, f"values must lie in [0, {2**bits - 1}]"
    shifts = torch.arange(bits, device=v.device)  # (bits,)
    stream = ((v.unsqueeze(-1) >> shifts) & 1).reshape(*v.shape[:-1], words, 32)  # (..., words, 32) one bit each
    packed = (stream << torch.arange(32, device=v.device)).sum(dim=-1)  # (..., words) in [0, 2**32)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)  # two's complement, as stored
    return packed.movedim(-1, dim).contiguous()


def unpack_bits(words: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Inverse of `pack_bits`: int32 words along `dim` -> int32 values in [0, 2**bits)."""
    w = words.movedim(dim, -1).to(torch.int64) & 0xFFFFFFFF  # (..., words) unsigned
    stream = (w.unsqueeze(-1) >> torch.arange(32, device=w.device)) & 1  # (..., words, 32)
    n = w.shape[-1] * 32 // bits
    fields = stream.reshape(*w.shape[:-1], n, bits)  # (..., n, bits)
    values = (fields << torch.arange(bits, device=w.device)).sum(dim=-1)  # (..., n)
    return values.to(torch.int32).movedim(-1, dim).contiguous()


def packed_shapes_gptq(in_features: int, out_features: int, bits: int, group_size: int) -> dict[str, tuple[int, ...]]:
    groups = in_features // (in_features if group_size == -1 else group_size)
    return {
        "qweight": (packed_length(in_features, bits), out_features),
        "qzeros": (groups, packed_length(out_features, bits)),
        "scales": (groups, out_features),
        "g_idx": (in_features,),
    }


def pack_gptq(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """A `QuantizedWeight` -> qweight, qzeros, scales, g_idx as GPTQ checkpoints store them."""
    check_gptq_bits(qw.w_bit)
    zeros = qw.zeros.to(torch.int64) - ZERO_OFFSET  # (out, groups)
    if int(zeros.min()) < 0:
        raise ValueError("a zero point of 0 cannot be stored in the GPTQ (v1) format, which stores zero - 1")
    return {
        "qweight": pack_bits(qw.q.t(), qw.w_bit, dim=0),  # (in * bits / 32, out)
        "qzeros": pack_bits(zeros.t(), qw.w_bit, dim=1),  # (groups, out * bits / 32)
        "scales": qw.scales.t().to(SCALE_DTYPE).contiguous(),  # (groups, out)
        "g_idx": qw.column_groups().to(torch.int32).contiguous(),  # (in,)
    }


def unpack_gptq(tensors: dict[str, torch.Tensor], bits: int, group_size: int) -> QuantizedWeight:
    """GPTQ checkpoint tensors -> a `QuantizedWeight` (g_idx kept only when it is not the natural order)."""
    check_gptq_bits(bits)
    qweight, qzeros, scales, g_idx = tensors["qweight"], tensors["qzeros"], tensors["scales"], tensors["g_idx"]
    q = unpack_bits(qweight, bits, dim=0).t()  # (out, in)
    out_features, in_features = q.shape
    groups = scales.shape[0]
    # Loaders add the 1 back without masking, so a stored all-ones field means zero = 2**bits (as read).
    zeros = unpack_bits(qzeros, bits, dim=1)[:, :out_features].t() + ZERO_OFFSET  # (out, groups)
    g = in_features if group_size == -1 else group_size
    g_idx = g_idx.to(torch.int32)
    assert g_idx.shape == (in_features,), f"g_idx shape {tuple(g_idx.shape)} != ({in_features},)"
    assert int(g_idx.min()) >= 0 and int(g_idx.max()) < groups, f"g_idx values must lie in [0, {groups})"
    natural = torch.arange(in_features, dtype=torch.int32, device=g_idx.device) // g
    return QuantizedWeight(
        q.contiguous(), scales.t().float().contiguous(), zeros.contiguous(), bits, g,
        None if torch.equal(g_idx, natural) else g_idx,
    )  # fmt: skip
