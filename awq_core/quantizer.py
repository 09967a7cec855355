"""Round-to-nearest group quantization: the one place where weights become integers.

Conventions used across the project:
- a linear's weight is `(out_features, in_features)`; groups run along `in_features`;
- `q` holds unsigned integers in `[0, 2**w_bit - 1]`;
- dequantization is always `(q - zeros) * scales`, so the symmetric case (no zero point) is stored
  with a constant zero of `2**(w_bit - 1)`, which keeps one layout for both;
- input column `j` belongs to group `j // group_size`, unless `g_idx` says otherwise (GPTQ act-order
  quantizes columns in another order and records each column's group in `g_idx`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


SCALE_DTYPE = torch.float16


@dataclass
class QuantizedWeight:
    q: torch.Tensor  # (out, in) int32 in [0, 2**w_bit - 1]
    scales: torch.Tensor  # (out, in // group) float
    zeros: torch.Tensor  # (out, in // group) int32
    w_bit: int
    group_size: int  # resolved: never -1
    g_idx: torch.Tensor | None = None  # (in,) int32 group of each input column; None: column // group_size

    def dequantize(self) -> torch.Tensor:
        if self.g_idx is None:
            return dequantize(self.q, self.scales, self.zeros, self.group_size)
        return dequantize_by_index(self.q, self.scales, self.zeros, self.g_idx)

    def column_groups(self) -> torch.Tensor:
        """(in,) the group of every input column."""
        if self.g_idx is not None:
            return self.g_idx
        return torch.arange(self.q.shape[1], device=self.q.device, dtype=torch.int32) // self.group_size


def resolve_group_size(group_size: int, in_features: int) -> int:
    """-1 means one group over the whole input dimension."""
    return in_features if group_size == -1 else group_size


def check_group_size(group_size: int, in_features: int, layer: str = "layer") -> int:
    """Resolve the group size and fail clearly when it does not divide the layer's input."""
    g = resolve_group_size(group_size, in_features)
    if in_features % g != 0:
        working = [s for s in (32, 64, 128) if in_features % s == 0] + [-1]
        raise ValueError(
            f"group_size={group_size} does not divide in_features={in_features} of {layer}; "
            f"group sizes that work for it: {working}"
        )
    return g


def group_range(w: torch.Tensor, w_bit: int, zero_point: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale and zero for `w` of shape (rows, group)."""
    if zero_point:
        max_int = 2**w_bit - 1
        w_max = w.amax(dim=1, keepdim=True)
        w_min = w.amin(dim=1, keepdim=True)
        scales = (w_max - w_min).clamp(min=1e-5) / max_int  # (rows, 1)
        zeros = (-torch.round(w_min / scales)).clamp(0, max_int)  # (rows, 1)
    else:
        max_int = 2 ** (w_bit - 1) - 1
        scales = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-5) / max_int
        zeros = torch.full_like(scales, 2 ** (w_bit - 1))
    return scales, zeros


def quantize(w: torch.Tensor, w_bit: int, group_size: int, zero_point: bool = True) -> QuantizedWeight:
    """Round-to-nearest quantization of a `(out, in)` weight in groups of `group_size` inputs."""
    assert w.dim() == 2, f"expected a (out, in) weight, got shape {tuple(w.shape)}"
    out_features, in_features = w.shape
    g = check_group_size(group_size, in_features)
    wg = w.detach().float().reshape(-1, g)  # (out * in / g, g)
    assert torch.isfinite(wg).all(), "weight has NaN or Inf values: quantization needs finite weights"
    scales, zeros = group_range(wg, w_bit, zero_point)
    # Checkpoints store fp16 scales: round them first so the integers match what gets saved, and the
    # in-memory fake-quantized model computes exactly what a loaded checkpoint computes.
    scales = scales.to(SCALE_DTYPE).float()
    q = (torch.round(wg / scales) + zeros).clamp(0, 2**w_bit - 1)
    return QuantizedWeight(
        q=q.to(torch.int32).reshape(out_features, in_features),
        scales=scales.reshape(out_features, in_features // g),
        zeros=zeros.to(torch.int32).reshape(out_features, in_features // g),
        w_bit=w_bit,
        group_size=g,
    )


def dequantize(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """`(q - zeros) * scales`, broadcasting each group's scale over its `group_size` inputs."""
    out_features, in_features = q.shape
    qg = q.reshape(out_features, -1, group_size).float()  # (out, groups, g)
    w = (qg - zeros.unsqueeze(-1).float()) * scales.unsqueeze(-1).float()
    return w.reshape(out_features, in_features)


def dequantize_by_index(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor) -> torch.Tensor:
    """`(q - zeros[:, g_idx]) * scales[:, g_idx]`: column j uses the scale and zero of group g_idx[j]."""
    g = g_idx.long()
    return (q.float() - zeros[:, g].float()) * scales[:, g].float()  # (out, in)


def fake_quantize(w: torch.Tensor, w_bit: int, group_size: int, zero_point: bool = True) -> torch.Tensor:
    """Quantize and dequantize, returning a tensor of `w`'s dtype: what the quantized layer computes with."""
    return quantize(w, w_bit, group_size, zero_point).dequantize().to(w.dtype)
