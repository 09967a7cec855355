"""Random AutoAWQ layers and the float64 reference, shared by the tests and the GPU benchmark's check."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .awq_layout import AWQ_GEMM_ORDER, pack_int32

RTOL = 1e-2  # ||y - ref|| / ||ref|| bound for fp16 / bf16 outputs against the float64 reference


@dataclass(frozen=True)
class AwqLayer:
    """One random layer in the AutoAWQ GEMM layout, plus its unpacked integers for the reference."""

    qweight: torch.Tensor  # (K, N / 8) int32
    qzeros: torch.Tensor  # (K / group, N / 8) int32
    scales: torch.Tensor  # (K / group, N)
    group_size: int
    q: torch.Tensor  # (K, N) int64
    z: torch.Tensor  # (K / group, N) int64


def random_awq_layer(k: int, n: int, group_size: int, dtype: torch.dtype, device="cpu", seed: int = 0) -> AwqLayer:
    """Uniform 4-bit codes and zero points, positive scales around 1/64 (weights of order 0.1)."""
    g = k if group_size == -1 else group_size
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randint(0, 16, (k, n), generator=gen)
    z = torch.randint(0, 16, (k // g, n), generator=gen)
    s = (torch.rand((k // g, n), generator=gen) * 0.02 + 0.005).to(dtype)
    return AwqLayer(
        qweight=pack_int32(q, 4, AWQ_GEMM_ORDER).to(device),
        qzeros=pack_int32(z, 4, AWQ_GEMM_ORDER).to(device),
        scales=s.to(device),
        group_size=g,
        q=q,
        z=z,
    )


def reference_matmul(x: torch.Tensor, layer: AwqLayer, bias: torch.Tensor | None = None) -> torch.Tensor:
    """float64 x (M, K) @ ((q - z) * s) (K, N) [+ bias], on the CPU."""
    g = layer.group_size
    z = layer.z.repeat_interleave(g, dim=0)  # (K, N)
    s = layer.scales.double().cpu().repeat_interleave(g, dim=0)  # (K, N)
    y = x.double().cpu() @ ((layer.q - z).double() * s)
    return y + bias.double().cpu() if bias is not None else y


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """||y - ref|| / ||ref||, NaN-propagating (a NaN output never passes a `<` check)."""
    y64 = y.double().cpu()
    return float(torch.linalg.norm(y64 - ref) / torch.linalg.norm(ref))
