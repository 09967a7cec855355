"""Load-time repack of AutoAWQ GEMM tensors into the layout the fused kernels read.

Checkpoints stay in the AutoAWQ GEMM layout (see `awq_layout.py`). Once, at load time, `prepare`
turns them into a `PreparedWeight`:

- `qweight` (K_pad / 128, N, 16) int32, packed along K instead of N. K is cut into blocks of
  `PACK_K = 128` rows; in block `b`, word `j` (0..15) of column `n` holds in nibble `i`
  (bits 4i..4i+3) the value of row `128 * b + 16 * i + j`. Unpacking nibble `i` of a
  (BLOCK_N, 16) word tile therefore yields a slab of 16 *consecutive* K rows, so activations are
  read contiguously and each slab is a ready `tl.dot` operand of depth 16. A column's 16 words are
  contiguous (64 bytes) and a tile of columns is one contiguous run of memory.
- `zero_scales` (G_pad, N) int32: per (group, column) the scale's 16 bits (the activation dtype, fp16
  or bf16) and the zero point in one word (`zero_scale.py`), so that kernels read both in one 4-byte load.

K is padded to a multiple of `PACK_K` with q = z = s = 0, so padded rows contribute exactly 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .awq_layout import AWQ_GEMM_ORDER, unpack_int32
from .zero_scale import pack_zero_scales, unpack_zero_scales

PACK_K = 128  # rows of K interleaved into one (16, N) block of words
SLAB_K = PACK_K // 8  # consecutive K rows per nibble slab


@dataclass(frozen=True)
class PreparedWeight:
    """Repacked int4 weight of a linear layer y = x @ W, with W of shape (K, N)."""

    qweight: torch.Tensor  # (K_pad / 128, N, 16) int32, K-interleaved (see module docstring)
    zero_scales: torch.Tensor  # (G_pad, N) int32: scale bits | zero point << 16 (`zero_scale.py`)
    dtype: torch.dtype  # the scales' (and activations') dtype: fp16 or bf16
    group_size: int
    in_features: int  # K, before padding
    out_features: int  # N

    @property
    def zeros(self) -> torch.Tensor:
        """(G_pad, N) uint8 zero points, unpacked (a copy, for reference paths and checks)."""
        return unpack_zero_scales(self.zero_scales, self.dtype)[0]

    @property
    def scales(self) -> torch.Tensor:
        """(G_pad, N) scales in `dtype`, unpacked (a copy, for reference paths and checks)."""
        return unpack_zero_scales(self.zero_scales, self.dtype)[1]

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    @property
    def padded_in_features(self) -> int:
        return self.qweight.shape[0] * PACK_K


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def pack_k_interleaved(q: torch.Tensor) -> torch.Tensor:
    """(K_pad, N) values in [0, 16) -> (K_pad / 128, N, 16) int32 in the interleaved K packing."""
    k_pad, n = q.shape
    assert k_pad % PACK_K == 0, f"K={k_pad} must be padded to a multiple of {PACK_K}"
    blocks = q.to(torch.int64).reshape(k_pad // PACK_K, 8, SLAB_K, n)  # (blocks, nibble i, row j, N)
    shifts = (torch.arange(8, device=q.device, dtype=torch.int64) * 4).view(1, 8, 1, 1)
    words = (blocks << shifts).sum(dim=1)  # (blocks, 16, N) in [0, 2**32)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return words.transpose(1, 2).contiguous()  # (blocks, N, 16)


def unpack_k_interleaved(words: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_k_interleaved`: (K_pad / 128, N, 16) int32 -> (K_pad, N) int32 in [0, 16)."""
    blocks, n, rows = words.shape
    assert rows == SLAB_K, f"last dimension {rows} != {SLAB_K} words per column and block"
    w = words.transpose(1, 2).reshape(blocks, 1, SLAB_K, n)  # (blocks, 1, 16, N)
    shifts = (torch.arange(8, device=words.device, dtype=torch.int32) * 4).view(1, 8, 1, 1)
    return ((w >> shifts) & 0xF).reshape(blocks * PACK_K, n)  # (K_pad, N)


def prepare(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> PreparedWeight:
    """AutoAWQ GEMM tensors -> `PreparedWeight`. `group_size` -1 means one group over all of K."""
    k, n_packed = qweight.shape
    n = n_packed * 8
    group_size = k if group_size == -1 else group_size
    assert qweight.dtype == torch.int32 and qzeros.dtype == torch.int32, "qweight and qzeros must be int32"
    assert scales.dtype in (torch.float16, torch.bfloat16), f"scales must be fp16 or bf16, got {scales.dtype}"
    assert k % group_size == 0, f"in_features={k} must be a multiple of group_size={group_size}"
    assert group_size % SLAB_K == 0, f"group_size={group_size} must be a multiple of {SLAB_K}"
    groups = k // group_size
    assert qzeros.shape == (groups, n_packed), f"qzeros shape {tuple(qzeros.shape)} != {(groups, n_packed)}"
    assert scales.shape == (groups, n), f"scales shape {tuple(scales.shape)} != {(groups, n)}"

    k_pad = _round_up(k, PACK_K)
    groups_pad = -(-k_pad // group_size)
    q = unpack_int32(qweight, 4, AWQ_GEMM_ORDER)  # (K, N)
    q = torch.nn.functional.pad(q, (0, 0, 0, k_pad - k))  # (K_pad, N)
    z = unpack_int32(qzeros, 4, AWQ_GEMM_ORDER).to(torch.uint8)  # (G, N)
    z = torch.nn.functional.pad(z, (0, 0, 0, groups_pad - groups))  # (G_pad, N)
    s = torch.nn.functional.pad(scales, (0, 0, 0, groups_pad - groups))  # (G_pad, N)
    return PreparedWeight(
        qweight=pack_k_interleaved(q).contiguous(),
        zero_scales=pack_zero_scales(z, s).contiguous(),
        dtype=scales.dtype,
        group_size=group_size,
        in_features=k,
        out_features=n,
    )


def dequantize_prepared(weight: PreparedWeight) -> torch.Tensor:
    """PreparedWeight -> dense (K, N) weight in the scales' dtype (computed in float32), for checks."""
    q = unpack_k_interleaved(weight.qweight)[: weight.in_features]  # (K, N)
    rows = torch.arange(weight.in_features, device=q.device) // weight.group_size  # (K,)
    zeros, scales = unpack_zero_scales(weight.zero_scales, weight.dtype)  # (G_pad, N) each
    z = zeros.to(torch.int32)[rows]  # (K, N)
    s = scales.float()[rows]  # (K, N)
    return ((q - z).float() * s).to(weight.dtype)
