"""AWQ's scale search: per input channel, s = x_mean^r / w_mean^(1-r), r on a grid, keep the best.

The loss is the MSE between the float output of the group's `inspect` module and its output when
the group's linears are fake-quantized with the candidate scale. The identity scale (plain RTN) is
always a candidate, so the search can never do worse than round-to-nearest on its own loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from awq_core.quantizer import fake_quantize, resolve_group_size


@dataclass
class ScaleSearchResult:
    scales: torch.Tensor  # (in_features,) float32
    ratio: float | None  # the chosen r; None when the identity (RTN) won
    loss: float
    rtn_loss: float


def channel_mean_abs(x: torch.Tensor, chunk_rows: int = 65536) -> torch.Tensor:
    """Mean |x| per channel over every token, in float32, chunked to bound memory: (in_features,)."""
    flat = x.reshape(-1, x.shape[-1])  # (tokens, in)
    total = torch.zeros(flat.shape[1], dtype=torch.float32, device=x.device)
    for start in range(0, flat.shape[0], chunk_rows):
        total += flat[start : start + chunk_rows].abs().float().sum(dim=0)
    return total / flat.shape[0]


def weight_mean_normalized(linears: list[nn.Linear], group_size: int) -> torch.Tensor:
    """Mean over output rows of |w| / max|w| of its quantization group: (in_features,)."""
    weight = torch.cat([l.weight for l in linears], dim=0).float()  # (sum out, in)
    g = resolve_group_size(group_size, weight.shape[1])
    grouped = weight.abs().reshape(-1, g)  # (sum out * in / g, g)
    normalized = grouped / grouped.amax(dim=1, keepdim=True).clamp(min=1e-8)
    return normalized.reshape(weight.shape).mean(dim=0)


def candidate_scales(x_mean: torch.Tensor, w_mean: torch.Tensor, ratio: float, duo_scaling: bool) -> torch.Tensor:
    if duo_scaling:
        s = x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)
    else:
        s = x_mean.pow(ratio)
    s = s.clamp(min=1e-4)
    # Normalize so the scales straddle 1: keeps weights and norms in a comfortable float range.
    return s / (s.max() * s.min()).sqrt()


def output_mse(reference: torch.Tensor, output: torch.Tensor) -> float:
    return float((reference.float() - output.float()).pow(2).mean())


@torch.no_grad()
def search_scales(
    linears: list[nn.Linear],
    x: torch.Tensor,
    inspect: Callable[[torch.Tensor], torch.Tensor],
    reference: torch.Tensor,
    *,
    w_bit: int,
    group_size: int,
    zero_point: bool,
    n_grid: int,
    duo_scaling: bool,
) -> ScaleSearchResult:
    """Grid-search the scale of one group. `x` feeds every linear of the group; `reference` is
    `inspect(x)` with float weights. The linears' weights are restored before returning."""
    originals = [l.weight.detach().clone() for l in linears]
    x_mean = channel_mean_abs(x).to(originals[0].device)
    w_mean = weight_mean_normalized(linears, group_size)

    def loss_with(scales: torch.Tensor) -> float:
        for linear, w in zip(linears, originals):
            s = scales.view(1, -1).to(w)  # (1, in)
            linear.weight.copy_(fake_quantize(w * s, w_bit, group_size, zero_point) / s)
        return output_mse(reference, inspect(x))

    identity = torch.ones_like(x_mean)
    best = ScaleSearchResult(identity, None, loss_with(identity), 0.0)
    best.rtn_loss = best.loss
    for step in range(n_grid):
        ratio = step / n_grid
        scales = candidate_scales(x_mean, w_mean, ratio, duo_scaling)
        loss = loss_with(scales)
        if loss < best.loss:
            best = ScaleSearchResult(scales, ratio, loss, best.rtn_loss)
    for linear, w in zip(linears, originals):
        linear.weight.copy_(w)
    assert torch.isfinite(best.scales).all(), "scale search produced non-finite scales"
    return best
