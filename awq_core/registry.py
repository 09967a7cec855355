"""Which architectures we quantize, and how each decoder block splits into AWQ scaling groups.

A scaling group is `prev_op -> linears`: the per-input-channel scale `s` multiplies the columns of the
linears and divides the output of `prev_op` (a norm's weight, or the rows of a preceding linear),
which leaves the float model's function unchanged. `inspect` is the module whose output the scale
search compares against the float output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch.nn as nn


@dataclass(frozen=True)
class ScalingGroup:
    prev_op: str  # module path inside the block: a norm or a linear
    linears: tuple[str, ...]  # linears fed by prev_op's output
    inspect: str  # module whose output measures the loss
    # A linear -> linear group is only exact when prev_op's outputs are exactly the linears' inputs.
    # With grouped-query attention v_proj has fewer outputs than o_proj has inputs, so it is skipped.
    needs_matching_shapes: bool = False


@dataclass(frozen=True)
class Architecture:
    name: str
    model_types: tuple[str, ...]
    class_names: tuple[str, ...]
    blocks: str  # path of the ModuleList of decoder blocks
    groups: tuple[ScalingGroup, ...]
    # Gemma's RMSNorm multiplies by (1 + weight): dividing its output by s means (1 + w) / s - 1.
    norm_weight_offset: float = 0.0


def _attention_and_mlp_groups(mlp_norm: str) -> tuple[ScalingGroup, ...]:
    return (
        ScalingGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
        ScalingGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj", needs_matching_shapes=True),
        ScalingGroup(mlp_norm, ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
        ScalingGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
    )


_LLAMA_LIKE = _attention_and_mlp_groups("post_attention_layernorm")
# Gemma 2/3 norm the attention *output* with post_attention_layernorm; the MLP input norm is pre_feedforward.
_GEMMA_LIKE = _attention_and_mlp_groups("pre_feedforward_layernorm")

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("llama", ("llama",), ("LlamaForCausalLM",), "model.layers", _LLAMA_LIKE),
    Architecture("mistral", ("mistral",), ("MistralForCausalLM",), "model.layers", _LLAMA_LIKE),
    Architecture("qwen2", ("qwen2",), ("Qwen2ForCausalLM",), "model.layers", _LLAMA_LIKE),
    Architecture("qwen3", ("qwen3",), ("Qwen3ForCausalLM",), "model.layers", _LLAMA_LIKE),
    Architecture("gemma", ("gemma",), ("GemmaForCausalLM",), "model.layers", _LLAMA_LIKE, norm_weight_offset=1.0),
    Architecture("gemma2", ("gemma2",), ("Gemma2ForCausalLM",), "model.layers", _GEMMA_LIKE, norm_weight_offset=1.0),
    Architecture(
        "gemma3_text", ("gemma3_text",), ("Gemma3ForCausalLM",), "model.layers", _GEMMA_LIKE, norm_weight_offset=1.0
    ),
)


class UnsupportedArchitectureError(ValueError):
    pass


def supported_names() -> list[str]:
    return [a.name for a in ARCHITECTURES]


def detect_architecture(config: Mapping[str, Any] | Any) -> Architecture:
    """Find the registry entry from a config.json dict or a transformers config object."""
    get = config.get if isinstance(config, Mapping) else (lambda key, default=None: getattr(config, key, default))
    model_type = get("model_type")
    class_names = tuple(get("architectures") or ())
    for arch in ARCHITECTURES:
        if model_type in arch.model_types or any(c in arch.class_names for c in class_names):
            return arch
    raise UnsupportedArchitectureError(
        f"unsupported architecture: model_type={model_type!r}, architectures={list(class_names)}; "
        f"awqflow supports: {', '.join(supported_names())}"
    )


def get_module(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        if not hasattr(module, part):
            raise AttributeError(f"{type(root).__name__} has no submodule {path!r} (missing {part!r})")
        module = getattr(module, part)
    return module


def get_blocks(model: nn.Module, arch: Architecture) -> nn.ModuleList:
    return get_module(model, arch.blocks)


def active_groups(block: nn.Module, arch: Architecture) -> list[ScalingGroup]:
    """The groups that apply to this block (drops linear->linear groups whose shapes don't line up)."""
    groups = []
    for group in arch.groups:
        if group.needs_matching_shapes:
            prev, first = get_module(block, group.prev_op), get_module(block, group.linears[0])
            if prev.out_features != first.in_features:
                continue
        groups.append(group)
    return groups


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear in a block, by its path inside the block."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}
