"""Decoder layers whose RMSNorms, silu(gate) * up and residual adds run inside their W4 products.

At batch 1 a Llama-family layer runs, around its four products, two RMSNorms (each fused by Inductor with
the residual add before it) and one silu(gate) * up: kernels of a few KB each that cost mostly their
launches (benchmarks/README.md, the decode profile). The GEMV can do them on the way
(`triton_kernels/fusion.py`), so for one-token steps the layer runs:

    qkv = RMSNorm(h) @ Wqkv              the norm inside the qkv product
    rotary, cache update, attention      one kernel on a static cache with our decode attention
                                         (`attention.decode_attention_new_token`), else the model's own
                                         functions, as in its attention's forward
    h   = attn @ Wo + h, and h * w       the residual add in the o product's epilogue, which also writes h
                                         times the next norm's weight
    g   = silu * up(RMSNorm(h) @ Wgu)    the gate/up product reads h * w and multiplies by 1 / rms(h); it
                                         writes silu(gate) * up
    h   = g @ Wdown + h                  the residual add in the down product's epilogue

It needs the fused q/k/v and gate/up W4 linears (`fused_linear.py`) and a layer whose code is the one
above, as `SUPPORTED_LAYERS` lists them; other layers are left as they are. Steps of more than
`FUSED_MAX_TOKENS` tokens (the prefill, batches) run the model's own forward: only the GEMV does the fused
ops in its epilogue, and elsewhere they would run as separate, unfused PyTorch ops.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from triton_kernels import LinearFusion

from .attention import decode_attention_new_token, new_token_fits
from .fused_linear import FusedLinear, LinearShard
from .qlinear import WQLinear
from .static_cache import static_layer

# Tokens per step (batch x query length) up to which layers take the fused path: M=1 runs the GEMV on every
# shape (triton_kernels.dispatch); from M=2 some shapes take the tensor-core GEMM, around which the fused ops
# would be separate eager PyTorch ops, slower than the kernels Inductor fuses them into.
FUSED_MAX_TOKENS = 1


@dataclass(frozen=True)
class LayerCode:
    """What a supported decoder layer's attention passes to the attention function besides the tensors."""

    attention_kwargs: Callable[[nn.Module], dict]
    reason: str


SUPPORTED_LAYERS: dict[str, LayerCode] = {
    "LlamaDecoderLayer": LayerCode(lambda attn: {}, "the layer code above, transformers 5.x"),
    "MistralDecoderLayer": LayerCode(
        lambda attn: {"sliding_window": getattr(attn.config, "sliding_window", None)},
        "Llama's code; its attention also passes config.sliding_window"),
    "Qwen2DecoderLayer": LayerCode(
        lambda attn: {"sliding_window": attn.sliding_window},
        "Llama's code with q/k/v biases (added by the product); its attention also passes its sliding window"),
}
RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")  # weight * (x / rms(x)).to(dtype), eps in float32
SILU = ("SiLU", "SiLUActivation")  # torch's and transformers' x * sigmoid(x)


def _fused_of(shard: nn.Module, names: tuple[str, ...]) -> WQLinear | None:
    """The W4 linear that `shard` is a slice of, if it is one of a FusedLinear over exactly `names`."""
    if not isinstance(shard, LinearShard):
        return None
    fused: FusedLinear = shard.fused
    return fused.linear if fused.names == names and isinstance(fused.linear, WQLinear) else None


def why_not_fusable(layer: nn.Module) -> str | None:
    """None if `fuse_decoder_layers` can switch this layer, else the reason it cannot."""
    name = type(layer).__name__
    if name not in SUPPORTED_LAYERS:
        return f"{name} is not among {sorted(SUPPORTED_LAYERS)}"
    attn, mlp = layer.self_attn, layer.mlp
    for norm in (layer.input_layernorm, layer.post_attention_layernorm):
        if type(norm).__name__ not in RMS_NORMS:
            return f"norm {type(norm).__name__} is not one of {RMS_NORMS}"
    if _fused_of(attn.q_proj, ("q_proj", "k_proj", "v_proj")) is None:
        return "q/k/v are not one fused W4 linear (fuse_linears on a W4 model)"
    if _fused_of(mlp.gate_proj, ("gate_proj", "up_proj")) is None:
        return "gate/up are not one fused W4 linear (fuse_linears on a W4 model)"
    if not isinstance(attn.o_proj, WQLinear) or not isinstance(mlp.down_proj, WQLinear):
        return "o_proj or down_proj is not a W4 linear"
    act = type(getattr(mlp, "act_fn", None)).__name__
    if act not in SILU:
        return f"activation {act} is not one of {SILU}"
    return None


def _norm_fusion(norm: nn.Module) -> LinearFusion:
    return LinearFusion(norm_weight=norm.weight, eps=norm.variance_epsilon)


def _model_attention(layer: nn.Module, q, k, v, attention_mask, past_key_values, cos, sin, kwargs) -> torch.Tensor:
    """The rotary embedding, cache update and attention function of the layer's own attention (B, T, H, D)."""
    attn = layer.self_attn
    model_code = sys.modules[type(attn).__module__]  # the functions the model's own attention calls
    q, k = model_code.apply_rotary_pos_emb(q, k, cos, sin)
    if past_key_values is not None:
        k, v = past_key_values.update(k, v, attn.layer_idx)
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation,
                                                      model_code.eager_attention_forward)
    extra = layer.layer_code.attention_kwargs(attn)
    out, _ = attention(attn, q, k, v, attention_mask, dropout=0.0, scaling=attn.scaling, **extra, **kwargs)
    return out


def fused_decode_forward(layer: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
                         past_key_values, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                         **kwargs) -> torch.Tensor:
    """The layer's forward (see the module docstring) with its norms, activation and residual adds in its
    products. hidden_states (B, T, hidden) -> (B, T, hidden)."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv_linear = attn.q_proj.fused
    lead = hidden_states.shape[:-1]
    qkv = qkv_linear.linear.fused_forward(hidden_states, _norm_fusion(layer.input_layernorm))  # (B, T, q + k + v)
    heads = (*lead, -1, attn.head_dim)
    q, k, v = (t.view(heads).transpose(1, 2) for t in qkv.split(qkv_linear.sizes, dim=-1))  # (B, H, T, D)
    cos, sin = position_embeddings
    cache_layer = static_layer(past_key_values, attn.layer_idx)
    if cache_layer is not None and new_token_fits(attn, q, k, cache_layer, attention_mask, cos, kwargs):
        out = decode_attention_new_token(q, k, v, cache_layer, attention_mask, cos, sin, attn.scaling)  # (B, T, H, D)
    else:
        out = _model_attention(layer, q, k, v, attention_mask, past_key_values, cos, sin, kwargs)
    out = out.reshape(*lead, -1).contiguous()  # (B, T, H * D)
    norm = layer.post_attention_layernorm
    hidden_states, scaled = attn.o_proj.fused_forward(
        out, LinearFusion(residual=hidden_states, scaled_output_weight=norm.weight))  # (B, T, hidden) each
    gate_up = mlp.gate_proj.fused.linear
    act = gate_up.fused_forward(scaled, LinearFusion(rms_of=hidden_states, eps=norm.variance_epsilon, glu=True))
    return mlp.down_proj.fused_forward(act, LinearFusion(residual=hidden_states))  # (B, T, hidden)


class FusedDecoderLayer:
    """Mixed into a supported layer's class (`fuse_decoder_layers`): steps of at most FUSED_MAX_TOKENS tokens
    take `fused_decode_forward`, all others the layer's own forward."""

    layer_code: LayerCode  # the SUPPORTED_LAYERS entry of the layer's own class

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                position_embeddings=None, **kwargs):
        if hidden_states.shape[0] * hidden_states.shape[1] > FUSED_MAX_TOKENS or position_embeddings is None:
            return super().forward(hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                                   past_key_values=past_key_values, use_cache=use_cache,
                                   position_embeddings=position_embeddings, **kwargs)  # fmt: skip
        return fused_decode_forward(self, hidden_states, attention_mask, past_key_values, position_embeddings,
                                    **kwargs)


_fused_classes: dict[type, type] = {}


def _fused_class(cls: type) -> type:
    """`cls` with FusedDecoderLayer's forward, one subclass per class (a subclass, not a patched instance:
    torch.compile traces it like any module's forward)."""
    if cls not in _fused_classes:
        _fused_classes[cls] = type("Fused" + cls.__name__, (FusedDecoderLayer, cls),
                                   {"layer_code": SUPPORTED_LAYERS[cls.__name__]})
    return _fused_classes[cls]


def fuse_decoder_layers(model: nn.Module) -> int:
    """Switch every decoder layer that `why_not_fusable` accepts to `FusedDecoderLayer`; returns how many."""
    switched = 0
    for module in model.modules():
        if isinstance(module, FusedDecoderLayer):
            switched += 1
        elif type(module).__name__ in SUPPORTED_LAYERS and why_not_fusable(module) is None:
            module.__class__ = _fused_class(type(module))
            switched += 1
    return switched


def unfuse_decoder_layers(model: nn.Module) -> int:
    """Undo `fuse_decoder_layers`; returns how many layers were switched back."""
    switched = 0
    for module in model.modules():
        if isinstance(module, FusedDecoderLayer):
            module.__class__ = type(module).__mro__[2]  # (Fused<cls>, FusedDecoderLayer, cls, ...)
            switched += 1
    return switched
