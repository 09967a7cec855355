"""Fuse a per-channel scale into a block: `prev_op` output / s, following linears' columns * s.

Exact in real arithmetic, so the float model computes the same function before quantization; the
quantizer then sees weights whose salient input channels are larger and so lose less to rounding.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from awq_core.registry import Architecture, ScalingGroup, get_module


@torch.no_grad()
def divide_output(prev_op: nn.Module, scales: torch.Tensor, norm_weight_offset: float) -> None:
    """Make `prev_op`'s output come out divided by `scales` (one per output channel)."""
    if isinstance(prev_op, nn.Linear):
        prev_op.weight.div_(scales.view(-1, 1).to(prev_op.weight))  # (out, in) rows
        if prev_op.bias is not None:
            prev_op.bias.div_(scales.to(prev_op.bias))
        return
    weight = getattr(prev_op, "weight", None)
    assert weight is not None and weight.dim() == 1, (
        f"cannot fuse a scale into {type(prev_op).__name__}: expected a Linear or a norm with a 1-D weight"
    )
    s = scales.to(torch.float32)
    # A norm computes norm(x) * (offset + w); dividing that by s gives offset + ((offset + w) / s - offset).
    new_weight = (weight.float() + norm_weight_offset) / s - norm_weight_offset
    weight.copy_(new_weight.to(weight.dtype))
    bias = getattr(prev_op, "bias", None)
    if bias is not None:
        bias.div_(scales.to(bias))


@torch.no_grad()
def multiply_inputs(linears: list[nn.Linear], scales: torch.Tensor) -> None:
    """Scale the input columns of each linear by `scales`: W[:, j] *= s[j]."""
    for linear in linears:
        linear.weight.mul_(scales.view(1, -1).to(linear.weight))  # (out, in) columns


def apply_scales(block: nn.Module, group: ScalingGroup, scales: torch.Tensor, arch: Architecture) -> None:
    """Fuse `scales` (one per input channel of the group's linears) into the block, in place."""
    linears = [get_module(block, name) for name in group.linears]
    for linear in linears:
        assert linear.in_features == scales.numel(), (
            f"{group.prev_op} -> {group.linears}: {scales.numel()} scales for in_features={linear.in_features}"
        )
    divide_output(get_module(block, group.prev_op), scales, arch.norm_weight_offset)
    multiply_inputs(linears, scales)
