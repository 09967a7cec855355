"""AWQ's clip search: per output row and quantization group, shrink the clipping range
[-max|w|, max|w|] by a ratio in [1 - max_shrink, 1] and keep the ratio that minimizes the error
of that group's contribution to the output on sampled calibration tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from awq_core.quantizer import fake_quantize, resolve_group_size


@dataclass
class ClipResult:
    max_val: torch.Tensor  # (out, groups): the clipping bound per row and group
    ratios: torch.Tensor  # (out, groups): chosen max_val / original max|w|


def sample_tokens(x: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """An evenly strided subset of at most `n_tokens` rows of the flattened input: (tokens, in)."""
    flat = x.reshape(-1, x.shape[-1])  # (tokens, in)
    step = max(1, flat.shape[0] // n_tokens)
    return flat[::step][:n_tokens]


@torch.no_grad()
def search_clip(
    weight: torch.Tensor,
    x: torch.Tensor,
    *,
    w_bit: int,
    group_size: int,
    zero_point: bool,
    max_shrink: float,
    n_grid: int,
    n_sample_tokens: int,
    rows_per_batch: int = 256,
) -> ClipResult:
    out_features, in_features = weight.shape
    g = resolve_group_size(group_size, in_features)
    tokens = sample_tokens(x, n_sample_tokens).float().to(weight.device)  # (t, in)
    tokens = tokens.reshape(tokens.shape[0], -1, g).transpose(0, 1)  # (groups, t, g)
    max_vals, ratios = [], []
    for start in range(0, out_features, rows_per_batch):
        w = weight[start : start + rows_per_batch].float()  # (rows, in)
        w = w.reshape(w.shape[0], -1, g).transpose(0, 1)  # (groups, rows, g)
        org_max = w.abs().amax(dim=-1, keepdim=True)  # (groups, rows, 1)
        # Each group's contribution to each output: a batched matmul over groups.
        org_out = torch.bmm(tokens, w.transpose(1, 2))  # (groups, t, rows)
        best_err = torch.full(org_max.shape[:2], float("inf"), device=w.device)  # (groups, rows)
        best_ratio = torch.ones_like(best_err)
        for step in range(int(max_shrink * n_grid)):
            ratio = 1 - step / n_grid
            bound = org_max * ratio
            clipped = w.clamp(-bound, bound)  # (groups, rows, g)
            q = fake_quantize(clipped.reshape(-1, g), w_bit, g, zero_point).reshape(w.shape)
            err = (torch.bmm(tokens, q.transpose(1, 2)) - org_out).pow(2).mean(dim=1)  # (groups, rows)
            better = err < best_err
            best_err[better] = err[better]
            best_ratio[better] = ratio
        ratios.append(best_ratio.t())  # (rows, groups)
        max_vals.append((org_max.squeeze(-1) * best_ratio).t())
    return ClipResult(torch.cat(max_vals), torch.cat(ratios))


@torch.no_grad()
def apply_clip(weight: torch.Tensor, max_val: torch.Tensor) -> None:
    """Clamp each row group of `weight` (out, in) to [-max_val, max_val] in place."""
    out_features, in_features = weight.shape
    g = in_features // max_val.shape[1]
    grouped = weight.view(out_features, -1, g)  # (out, groups, g)
    bound = max_val.unsqueeze(-1).to(weight)  # (out, groups, 1)
    grouped.copy_(torch.max(torch.min(grouped, bound), -bound))
