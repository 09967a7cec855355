"""Tiny models quantized with RTN in a few lines, and their fake-quantized float twins: the reference
that a quantized model's outputs must equal (the same dequantized weights in plain nn.Linear)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from awq_core.checkpoint import replace_linears
from awq_core.quantizer import QuantizedWeight, quantize
from tiny_models import tiny_model

GROUP = 32  # divides the tiny models' hidden (64) and intermediate (128) sizes


def quantize_all(model: nn.Module, group_size: int = GROUP) -> dict[str, QuantizedWeight]:
    """RTN of every linear but the output head."""
    head = model.get_output_embeddings()
    return {
        name: quantize(m.weight, 4, group_size)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and m is not head
    }


@torch.no_grad()
def fake_quantized(model: nn.Module, quantized: dict[str, QuantizedWeight]) -> nn.Module:
    """A float copy whose linears hold the dequantized weights."""
    twin = copy.deepcopy(model)
    for name, qw in quantized.items():
        linear = twin.get_submodule(name)
        linear.weight.copy_(qw.dequantize())
        if linear.bias is not None:  # WQLinear keeps its bias in the scales' dtype (fp16), as AutoAWQ does
            linear.bias.copy_(linear.bias.half().float())
    return twin.eval()


def quantized_pair(kind: str = "llama", version: str = "gemm", seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(model with WQLinear layers, its fake-quantized float twin), both float32 on the CPU."""
    model = tiny_model(kind, seed)
    quantized = quantize_all(model)
    reference = fake_quantized(model, quantized)
    return replace_linears(model, quantized, version).eval(), reference
