"""Bit layout of AutoAWQ-style packed int32 words: the contract between checkpoints and kernels.

A packed word holds `32 // bits` integers. Element `order[i]` of each run of `32 // bits` consecutive
values along the last dimension lands in bits `[i * bits, (i + 1) * bits)` of the word.

- AutoAWQ GEMM (`qweight` (in, out / 8), `qzeros` (in / group, out / 8)) interleaves the nibbles as
  `[0, 2, 4, 6, 1, 3, 5, 7]`: unpacking a word with shifts 0, 4, ..., 28 then yields the columns in
  an order that its CUDA kernel converts to half pairs cheaply.
- AutoAWQ GEMV (`qweight` (out, in / 8)) and GPTQ use the plain order `[0, 1, ..., 7]`.
"""
from __future__ import annotations

import torch

AWQ_GEMM_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
SEQUENTIAL_ORDER_4BIT = (0, 1, 2, 3, 4, 5, 6, 7)


def _check_order(order: tuple[int, ...], bits: int) -> None:
    assert 32 % bits == 0, f"bits={bits} must divide 32 for word packing"
    assert sorted(order) == list(range(32 // bits)), f"order {order} is not a permutation of 0..{32 // bits - 1}"


def pack_int32(values: torch.Tensor, bits: int, order: tuple[int, ...]) -> torch.Tensor:
    """Pack unsigned `bits`-wide integers along the last dim: (..., n) -> (..., n * bits / 32) int32."""
    _check_order(order, bits)
    per_word = 32 // bits
    assert values.shape[-1] % per_word == 0, (
        f"last dimension {values.shape[-1]} must be a multiple of {per_word} to pack {bits}-bit values"
    )
    v = values.to(torch.int64).reshape(*values.shape[:-1], -1, per_word)  # (..., words, per_word)
    assert int(v.min()) >= 0 and int(v.max()) < 2**bits, f"values must lie in [0, {2**bits - 1}]"
    shifts = torch.arange(per_word, device=v.device, dtype=torch.int64) * bits  # (per_word,)
    words = (v[..., list(order)] << shifts).sum(dim=-1)  # (..., words) in [0, 2**32)
    # Reinterpret as signed int32 (two's complement), as the checkpoints store them.
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_int32(words: torch.Tensor, bits: int, order: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `pack_int32`: (..., words) int32 -> (..., words * 32 / bits) int32 in [0, 2**bits)."""
    _check_order(order, bits)
    per_word = 32 // bits
    shifts = torch.arange(per_word, device=words.device, dtype=torch.int32) * bits  # (per_word,)
    fields = (words.unsqueeze(-1) >> shifts) & (2**bits - 1)  # (..., words, per_word), slot i
    inverse = [0] * per_word
    for slot, column in enumerate(order):
        inverse[column] = slot
    return fields[..., inverse].reshape(*words.shape[:-1], -1)


def dequantize_awq_gemm(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """AutoAWQ GEMM layout -> dense `(in, out)` weight in `scales`' dtype, computed in float32."""
    q = unpack_int32(qweight, 4, AWQ_GEMM_ORDER)  # (in, out)
    z = unpack_int32(qzeros, 4, AWQ_GEMM_ORDER)  # (in / group, out)
    z = z.repeat_interleave(group_size, dim=0)  # (in, out)
    s = scales.float().repeat_interleave(group_size, dim=0)  # (in, out)
    return ((q - z).float() * s).to(scales.dtype)
