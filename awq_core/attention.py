"""Decode attention for transformers models: our split-slot kernel for one-token steps, SDPA otherwise.

`use_decode_attention(model)` registers `decode_attention_forward` with transformers' attention
interface under `ATTENTION` (with SDPA's mask builder, so it gets the boolean masks SDPA gets) and
switches the model to it. Each call then takes `triton_kernels.decode_attention` when it can
(`kernel_fits`): one query token, a CUDA GPU (or Triton's CPU interpreter), fp16 or bf16, a boolean
mask or none, no dropout, no extras (soft-capping, attention sinks, position biases). Everything else,
the prefill included, goes to transformers' own SDPA function with the same arguments.

Why: SDPA's kernels are built for many query rows. For one query row at batch 1 they run one program
per head, each streaming the whole cache (32 programs on a 7B model), and read every slot of a static
cache, filled or not. The kernel splits the slots over more programs and skips the masked-off ones
(`triton_kernels/decode_attention.py`; speed in benchmarks/README.md).
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
from transformers import AttentionInterface
from transformers.cache_utils import StaticLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import triton_kernels
from triton_kernels.dispatch import MIN_CAPABILITY
from triton_kernels.ops import device_capability

from .static_cache import advance_position

ATTENTION = "awqflow_decode"  # the attn_implementation name the model is switched to
# Extra keyword arguments some models pass whose meaning the kernel does not implement (any not None).
UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks", "position_bias", "output_attentions", "head_mask")
# Oldest GPU per dtype: Triton's fp16 tensor-core products need Turing, bf16 ones Ampere.
MIN_CAPABILITY_BY_DTYPE = {torch.float16: MIN_CAPABILITY, torch.bfloat16: (8, 0)}


def _device_ok(device: torch.device, dtype: torch.dtype) -> bool:
    if device.type == "cpu":
        return os.environ.get("TRITON_INTERPRET") == "1"
    capability = device_capability(device)  # None off CUDA; cached, like the W4 linears' own check
    return capability is not None and capability >= MIN_CAPABILITY_BY_DTYPE[dtype]


def kernel_fits(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                dropout: float, kwargs: dict) -> bool:
    """Whether `triton_kernels.decode_attention` computes exactly what SDPA would for these arguments."""
    batch, heads, q_len, head_dim = query.shape
    return (
        q_len == 1
        and query.dtype in MIN_CAPABILITY_BY_DTYPE and key.dtype == value.dtype == query.dtype
        and key.shape == value.shape and key.shape[-1] == head_dim and heads % key.shape[1] == 0
        and (mask is None or (mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[-1] == key.shape[2]))
        and dropout == 0.0
        and all(kwargs.get(name) in (None, False) for name in UNSUPPORTED_KWARGS)
        and _device_ok(query.device, query.dtype)
    )  # fmt: skip


def decode_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (B, H, q_len, D), key and value (B, H_kv, S, D)
    -> ((B, q_len, H, D), None)."""
    if not kernel_fits(query, key, value, attention_mask, dropout, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)  # fmt: skip
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    mask = attention_mask[:, :, -1:, :] if attention_mask is not None else None  # (B, 1, 1, S)
    return triton_kernels.decode_attention(query, key, value, mask, scale), None


def new_token_fits(module: nn.Module, query: torch.Tensor, key: torch.Tensor, layer: StaticLayer,
                   mask: torch.Tensor | None, cos: torch.Tensor, kwargs: dict) -> bool:
    """Whether `decode_attention_new_token` can run this one-token step: the model on `ATTENTION`, the
    kernel fitting the static cache layer's tensors, and a rotary embedding over whole heads."""
    batch, _, _, head_dim = query.shape
    return (
        module.config._attn_implementation == ATTENTION
        and kernel_fits(query, layer.keys, layer.values, mask, 0.0, kwargs)
        and layer.keys.shape[0] == batch and key.shape == (batch, layer.keys.shape[1], 1, head_dim)
        and cos.shape == (batch, 1, head_dim) and cos.dtype == query.dtype
    )  # fmt: skip


def decode_attention_new_token(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layer: StaticLayer,
                               mask: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                               scaling: float) -> torch.Tensor:
    """A one-token step's rotary embedding, cache update and attention in one kernel (`NewToken` in
    `triton_kernels/decode_attention.py`): query (B, H, 1, D) and key (B, H_kv, 1, D) before the rotary
    embedding, value (B, H_kv, 1, D) -> (B, 1, H, D). The layer's position moves on as its `update`'s would."""
    mask = mask[:, :, -1:, :] if mask is not None else None  # (B, 1, 1, S)
    new = triton_kernels.NewToken(key, value, layer.cumulative_length, cos, sin)
    out = triton_kernels.decode_attention(query, layer.keys, layer.values, mask, scaling, new=new)
    advance_position(layer, 1)
    return out


def register() -> None:
    """Make `ATTENTION` a name transformers resolves (idempotent)."""
    AttentionInterface.register(ATTENTION, decode_attention_forward)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def use_decode_attention(model: nn.Module) -> bool:
    """Switch a transformers model to `ATTENTION`. False (and the model unchanged) where the model does
    not run its attention through transformers' attention interface or does not use SDPA-style masks."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", ATTENTION):
        return False  # eager, flash or flex attention: their masks and semantics differ; keep what was asked for
    register()
    model.set_attn_implementation(ATTENTION)
    return config._attn_implementation == ATTENTION
