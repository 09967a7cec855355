"""The ops around a decoder layer's products that a product can take in: `LinearFusion`.

At batch 1 each of a layer's RMSNorms, its silu(gate) * up and its two residual adds is a kernel of its own
that moves a few KB and costs mostly its launch (benchmarks/README.md, the decode profile). A product can
do them on the way:
- `norm_weight`: RMSNorm before the product. The product reads x times the norm's weight, and multiplies
  its sums by the row's 1 / rms(x) at the end (a scalar per row commutes with the product), so the
  normalised x is never written.
- `scaled_output_weight` and `rms_of`: the same RMSNorm split over two products. The one before writes,
  besides its output h, h times the next norm's weight; the next product reads that as its x and
  multiplies its sums by 1 / rms of the rows of h (`rms_of`). Multiplying x by the weight inside a product
  costs it an instruction per activation in its inner loop, which measured up to 3 us on the gate/up
  product of a 7B layer (results/fused_products_<gpu>.json); in the epilogue before, it is one per output.
- `glu`: the output is silu(y[:, :N / 2]) * y[:, N / 2:], for a gate/up product fused at load time.
- `residual`: a tensor added to the output, the residual stream.
In that order: ((RMSNorm(x) @ W + bias) -> silu * up) + residual, then the scaled copy. The GEMV does them
in its epilogue (`gemv.py`); the other kernels run the product between the same steps in PyTorch
(`reference_fusion`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LinearFusion:
    norm_weight: torch.Tensor | None = None  # (K,): RMSNorm x before the product
    eps: float = 1e-6  # the RMSNorm's epsilon
    glu: bool = False  # output silu(first half) * second half: (M, N / 2)
    residual: torch.Tensor | None = None  # (M, N out), added to the output
    rms_of: torch.Tensor | None = None  # (M, K): x is a norm's weight times these rows; RMSNorm them
    scaled_output_weight: torch.Tensor | None = None  # (N out,): also return the output times it

    def __post_init__(self):
        assert self.norm_weight is None or self.rms_of is None, "norm_weight and rms_of are two ways of one RMSNorm"

    def out_features(self, n: int) -> int:
        assert not self.glu or n % 2 == 0, f"glu needs an even number of output features, got {n}"
        return n // 2 if self.glu else n

    @property
    def rms_rows(self) -> bool:
        """Whether the sums are multiplied by a row's 1 / rms."""
        return self.norm_weight is not None or self.rms_of is not None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as Llama-family models compute it: in float32, rounded to x's dtype, times the weight."""
    normed = x.float() * inverse_rms(x, eps)
    return weight * normed.to(x.dtype)


def inverse_rms(h: torch.Tensor, eps: float) -> torch.Tensor:
    """(..., 1) float32 1 / sqrt(mean(h^2) + eps) of h's rows."""
    return torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + eps)


def reference_fusion(x: torch.Tensor, product: Callable[[torch.Tensor], torch.Tensor],
                     fusion: LinearFusion) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`fusion` around `product` (x (M, K) -> (M, N), bias included) as separate PyTorch ops: the output, and
    with `scaled_output_weight` (output, output times it)."""
    if fusion.norm_weight is not None:
        x = rms_norm(x, fusion.norm_weight, fusion.eps)
    if fusion.rms_of is not None:  # x = weight * h: weight * (h / rms(h)), rounded as rms_norm rounds
        x = (x.float() * inverse_rms(fusion.rms_of, fusion.eps)).to(x.dtype)
    y = product(x)  # (M, N)
    if fusion.glu:
        gate, up = y.chunk(2, dim=-1)
        y = F.silu(gate) * up  # (M, N / 2)
    if fusion.residual is not None:
        y = y + fusion.residual
    if fusion.scaled_output_weight is not None:
        return y, y * fusion.scaled_output_weight
    return y
