"""AWQ block by block, as in the paper's algorithm box:

    for each decoder block (only this block on the compute device):
        capture the inputs of every linear and the float output of every inspected module
        for each scaling group: search s, fuse it (prev_op / s, linears * s)
        for each linear (but q/k): search clip ratios, clamp
        quantize every linear (RTN on the transformed weights), record errors
        next block's input: the float block's output (or the quantized block's, if configured)

RTN is the same loop with both searches off. GPTQ replaces the per-block step (awq_core/gptq_block.py)
and always feeds the next block the quantized block's output.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn as nn

from awq_core.capture import (
    ModuleCall,
    capture_block_features,
    capture_block_kwargs,
    capture_first_block_inputs,
    run_block,
    to_device,
)
from awq_core.clip_search import ClipResult, apply_clip, sample_tokens, search_clip
from awq_core.config import QuantConfig, is_excluded
from awq_core.fuse import apply_scales
from awq_core.layer_stats import relative_weight_error, spread
from awq_core.quantizer import QuantizedWeight, check_group_size, quantize
from awq_core.registry import Architecture, active_groups, block_linears, detect_architecture, get_blocks
from awq_core.scale_search import channel_mean_abs, search_scales

ERROR_SAMPLE_TOKENS = 2048  # tokens used to report each linear's output error; enough for 3 digits


@dataclass
class LinearMetrics:
    name: str  # full module path, e.g. model.layers.3.mlp.down_proj
    block: int
    rtn_error: float  # relative output MSE of plain RTN on the original weights
    final_error: float  # relative output MSE after scaling, clipping and quantization
    scale_ratio: float | None = None  # chosen r of its scaling group (None: identity won or no group)
    scale_loss: float | None = None  # the group's inspect-module loss with the chosen scales
    scale_rtn_loss: float | None = None  # the same loss with identity scales
    clip_ratio_mean: float | None = None
    seconds: float = 0.0
    damp: float | None = None  # GPTQ: the dampening fraction its Cholesky factorization needed
    gptq_loss: float | None = None  # GPTQ: its objective, sum of (w - q)^2 / [H^-1]_jj / 2
    # Appended later; runs recorded before them lack these keys.
    scale_mean: float | None = None  # the spread of the input scales AWQ chose (None: no scaling group)
    scale_max_over_mean: float | None = None
    scale_outlier_share: float | None = None  # share of input channels scaled above 5x the mean
    input_max_over_mean: float | None = None  # the spread of the input's mean |x| per channel
    input_outlier_share: float | None = None  # share of input channels above 5x the mean: outlier channels
    rtn_weight_error: float | None = None  # ||W_rtn - W||^2 / ||W||^2
    weight_error: float | None = None  # the same for the final weight, mapped back through the scales
    clip_ratio_min: float | None = None
    clip_share: float | None = None  # share of (row, group) ranges the clip search shrank

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BlockResult:
    index: int
    quantized: dict[str, QuantizedWeight]  # by full module path
    metrics: list[LinearMetrics] = field(default_factory=list)
    seconds: float = 0.0


def relative_output_error(x: torch.Tensor, reference_w: torch.Tensor, w: torch.Tensor, x_for_w: torch.Tensor | None = None) -> float:
    """||x_w W^T - x R^T||^2 / ||x R^T||^2 on sampled tokens."""
    xs = sample_tokens(x, ERROR_SAMPLE_TOKENS).float()  # (t, in)
    xw = xs if x_for_w is None else sample_tokens(x_for_w, ERROR_SAMPLE_TOKENS).float()
    ref = xs @ reference_w.float().T  # (t, out)
    out = xw @ w.float().T
    return float((out - ref).pow(2).sum() / ref.pow(2).sum().clamp(min=1e-20))


def check_block(block: nn.Module, config: QuantConfig, prefix: str) -> None:
    """Fail before any work if a linear's in_features does not fit the group size."""
    for name, linear in block_linears(block).items():
        if not is_excluded(f"{prefix}.{name}", config.modules_to_not_convert):
            check_group_size(config.group_size, linear.in_features, f"{prefix}.{name}")


def check_finite(x: torch.Tensor, where: str) -> None:
    if not torch.isfinite(x).all():
        raise FloatingPointError(
            f"non-finite activations (NaN or Inf) at {where}: check the model's dtype (try float32) "
            "and the calibration text"
        )


@dataclass
class BlockCapture:
    """What one float block sees and computes on the calibration inputs."""

    output: torch.Tensor | None  # (n, seqlen, hidden) the float block's output; None when not needed
    feats: dict[str, torch.Tensor]  # each linear's input (n, seqlen, in) by its path inside the block
    calls: dict[str, ModuleCall]  # how the block calls each group's inspect module


@dataclass
class GroupScales:
    prev_op: str
    linears: tuple[str, ...]
    scales: torch.Tensor  # (in_features,) float32
    ratio: float | None
    loss: float
    rtn_loss: float


@torch.no_grad()
def capture_block(
    block: nn.Module, hidden: torch.Tensor, block_kwargs: dict, arch: Architecture, batch_size: int, where: str
) -> BlockCapture:
    """Stage 1: run the float block on its input, recording every linear's input and the inspect calls."""
    check_finite(hidden, f"the input of {where}")
    inspect = [g.inspect for g in active_groups(block, arch)]
    output, feats, calls = capture_block_features(block, hidden, block_kwargs, inspect, batch_size)
    return BlockCapture(output, feats, calls)


@torch.no_grad()
def search_block_scales(block: nn.Module, capture: BlockCapture, arch: Architecture, config: QuantConfig) -> list[GroupScales]:
    """Stage 2: search each scaling group's scales in order, fusing each into the block as it goes
    (later groups are searched on the already scaled block). Empty when the config searches no scales."""
    if not config.searches_scales:
        return []
    linears = block_linears(block)
    found = []
    for group in active_groups(block, arch):
        x = capture.feats[group.linears[0]]
        inspect = capture.calls[group.inspect]
        result = search_scales(
            [linears[n] for n in group.linears], x, inspect, inspect(x),
            w_bit=config.w_bit, group_size=config.group_size, zero_point=config.zero_point,
            n_grid=config.n_grid, duo_scaling=config.duo_scaling,
        )  # fmt: skip
        apply_scales(block, group, result.scales, arch)
        found.append(GroupScales(group.prev_op, group.linears, result.scales, result.ratio, result.loss, result.rtn_loss))
    return found


def apply_block_scales(block: nn.Module, scales: list[GroupScales], arch: Architecture) -> None:
    """Fuse searched scales into a float block, in the order they were searched."""
    groups = {(g.prev_op, g.linears): g for g in arch.groups}
    for s in scales:
        apply_scales(block, groups[(s.prev_op, s.linears)], s.scales, arch)


def linear_scales(block: nn.Module, scales: list[GroupScales]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per linear: the scale its inputs were multiplied by, and the one its outputs were divided by."""
    linears = block_linears(block)
    input_scale = {name: torch.ones(l.in_features, device=l.weight.device) for name, l in linears.items()}
    # A linear that is a group's prev_op (v_proj, up_proj) has its outputs divided by that group's scales.
    output_scale = {name: torch.ones(l.out_features, device=l.weight.device) for name, l in linears.items()}
    for s in scales:
        if s.prev_op in output_scale:
            output_scale[s.prev_op] = output_scale[s.prev_op] * s.scales.to(output_scale[s.prev_op])
        for n in s.linears:
            input_scale[n] = s.scales.to(input_scale[n])
    return input_scale, output_scale


def quantized_linears(block: nn.Module, prefix: str, config: QuantConfig) -> dict[str, nn.Linear]:
    return {n: l for n, l in block_linears(block).items() if not is_excluded(f"{prefix}.{n}", config.modules_to_not_convert)}


@torch.no_grad()
def search_block_clips(
    block: nn.Module, capture: BlockCapture, scales: list[GroupScales], prefix: str, config: QuantConfig
) -> dict[str, ClipResult]:
    """Stage 3: clip ratios of every quantized linear of a block whose scales are already fused.
    Leaves the weights untouched; empty when the config searches no clips."""
    if not config.searches_clip:
        return {}
    input_scale, _ = linear_scales(block, scales)
    clips = {}
    for name, linear in quantized_linears(block, prefix, config).items():
        if any(name.endswith(s) for s in config.clip.skip):
            continue
        x_scaled = capture.feats[name] / input_scale[name].to(capture.feats[name].dtype)  # what the linear now sees
        clips[name] = search_clip(
            linear.weight, x_scaled,
            w_bit=config.w_bit, group_size=config.group_size, zero_point=config.zero_point,
            max_shrink=config.clip.max_shrink, n_grid=config.clip.n_grid, n_sample_tokens=config.clip.n_sample_tokens,
        )  # fmt: skip
    return clips


@torch.no_grad()
def quantize_scaled_block(
    block: nn.Module,
    capture: BlockCapture,
    scales: list[GroupScales],
    clips: dict[str, ClipResult],
    originals: dict[str, torch.Tensor],
    index: int,
    prefix: str,
    config: QuantConfig,
) -> BlockResult:
    """Stage 4: clip and quantize every linear of a scaled block in place (weights end up fake-quantized),
    recording each linear's output error against its `originals` (the float weights before scaling)."""
    input_scale, output_scale = linear_scales(block, scales)
    ratios = {n: s for s in scales for n in s.linears}
    quantized: dict[str, QuantizedWeight] = {}
    metrics = []
    for name, linear in quantized_linears(block, prefix, config).items():
        t0 = time.perf_counter()
        m = LinearMetrics(f"{prefix}.{name}", index, 0.0, 0.0)
        if name in ratios:
            m.scale_ratio, m.scale_loss, m.scale_rtn_loss = ratios[name].ratio, ratios[name].loss, ratios[name].rtn_loss
            scale = spread(ratios[name].scales)
            m.scale_mean, m.scale_max_over_mean, m.scale_outlier_share = scale.mean, scale.max_over_mean, scale.outlier_share
        if name in clips:
            apply_clip(linear.weight, clips[name].max_val)
            clip_ratios = clips[name].ratios  # (out, groups)
            m.clip_ratio_mean, m.clip_ratio_min = float(clip_ratios.mean()), float(clip_ratios.min())
            m.clip_share = float((clip_ratios < 1).float().mean())
        qw = quantize(linear.weight, config.w_bit, config.group_size, config.zero_point)
        linear.weight.copy_(qw.dequantize().to(linear.weight.dtype))
        quantized[f"{prefix}.{name}"] = qw
        feats = capture.feats[name]
        rtn = quantize(originals[name], config.w_bit, config.group_size, config.zero_point).dequantize()
        m.rtn_error = relative_output_error(feats, originals[name], rtn)
        # Compare against the reference the scaled linear must reproduce: original outputs / output scale.
        reference = originals[name] / output_scale[name].view(-1, 1).to(originals[name])
        m.final_error = relative_output_error(feats, reference, linear.weight, feats / input_scale[name].to(feats.dtype))
        m.rtn_weight_error = relative_weight_error(originals[name], rtn)
        # (x / s) W_q^T = x (W_q / s)^T: the quantized weight in the original input coordinates.
        m.weight_error = relative_weight_error(reference, linear.weight / input_scale[name].view(1, -1).to(linear.weight))
        channels = spread(channel_mean_abs(feats))
        m.input_max_over_mean, m.input_outlier_share = channels.max_over_mean, channels.outlier_share
        m.seconds = time.perf_counter() - t0
        metrics.append(m)
    return BlockResult(index, quantized, metrics)


def linear_weights(block: nn.Module) -> dict[str, torch.Tensor]:
    return {name: l.weight.detach().clone() for name, l in block_linears(block).items()}


@torch.no_grad()
def fuse_and_quantize_block(
    block: nn.Module,
    capture: BlockCapture,
    scales: list[GroupScales],
    clips: dict[str, ClipResult],
    arch: Architecture,
    index: int,
    prefix: str,
    config: QuantConfig,
) -> BlockResult:
    """Stage 4 from a float block: fuse the searched scales into it, then clip and quantize."""
    originals = linear_weights(block)
    apply_block_scales(block, scales, arch)
    return quantize_scaled_block(block, capture, scales, clips, originals, index, prefix, config)


@torch.no_grad()
def quantize_block(
    block: nn.Module,
    index: int,
    prefix: str,
    hidden: torch.Tensor,
    block_kwargs: dict,
    arch: Architecture,
    config: QuantConfig,
    batch_size: int,
) -> tuple[BlockResult, torch.Tensor]:
    """Quantize one block in place (its linears end up holding fake-quantized weights).

    `hidden` is the block input (n, seqlen, hidden) on the block's device. Returns the result and the
    block's float output (the input of the next block).
    """
    start = time.perf_counter()
    capture = capture_block(block, hidden, block_kwargs, arch, batch_size, prefix)
    originals = linear_weights(block)
    scales = search_block_scales(block, capture, arch, config)
    clips = search_block_clips(block, capture, scales, prefix, config)
    result = quantize_scaled_block(block, capture, scales, clips, originals, index, prefix, config)
    next_hidden = run_block(block, hidden, block_kwargs, batch_size) if config.sequential_quantized_inputs else capture.output
    check_finite(next_hidden, f"the output of {prefix}")
    result.seconds = time.perf_counter() - start
    return result, next_hidden


def check_model(model: nn.Module, config: QuantConfig) -> Architecture:
    """Everything that can be checked before any work: the architecture and every layer's sizes."""
    arch = detect_architecture(model.config)
    for index, block in enumerate(get_blocks(model, arch)):
        check_block(block, config, prefix_of(arch, index))
    return arch


def prefix_of(arch: Architecture, index: int) -> str:
    return f"{arch.blocks}.{index}"


@torch.no_grad()
def iterate_blocks(
    model: nn.Module,
    input_ids: torch.Tensor,
    config: QuantConfig,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    start_block: int = 0,
    start_hidden: torch.Tensor | None = None,
) -> Iterator[BlockResult]:
    """Quantize the model's blocks in order, yielding each block's result as soon as it is done.

    Only the block being quantized is moved to `device`; it goes back to its original device after.
    `start_block`/`start_hidden` let a caller resume from a checkpointed block input.
    """
    from awq_core.gptq_block import quantize_block_gptq  # it builds on this module's block types

    arch = check_model(model, config)
    blocks = get_blocks(model, arch)
    kwargs_per_block = capture_block_kwargs(model, arch, input_ids[:1])
    hidden = start_hidden if start_hidden is not None else capture_first_block_inputs(model, arch, input_ids, batch_size)
    for index in range(start_block, len(blocks)):
        block = blocks[index]
        home = next(block.parameters()).device
        block.to(device)
        prefix, kwargs = prefix_of(arch, index), to_device(kwargs_per_block[index], device)
        if config.is_gptq:
            result, hidden = quantize_block_gptq(block, index, prefix, hidden.to(device), kwargs, config, batch_size)
        else:
            result, hidden = quantize_block(block, index, prefix, hidden.to(device), kwargs, arch, config, batch_size)
        block.to(home)
        yield result


@dataclass
class QuantizationResult:
    quantized: dict[str, QuantizedWeight]  # integer weights by module path
    metrics: list[LinearMetrics]
    seconds: float


def quantize_model(
    model: nn.Module,
    input_ids: torch.Tensor,
    config: QuantConfig,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    progress: Callable[[BlockResult], None] | None = None,
) -> QuantizationResult:
    """Quantize every decoder block in place (the model ends up fake-quantized)."""
    start = time.perf_counter()
    model.eval()
    result = QuantizationResult({}, [], 0.0)
    for block_result in iterate_blocks(model, input_ids, config, device, batch_size):
        result.quantized.update(block_result.quantized)
        result.metrics.extend(block_result.metrics)
        if progress is not None:
            progress(block_result)
    result.seconds = time.perf_counter() - start
    return result
