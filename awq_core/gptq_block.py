"""GPTQ for one decoder block, as in the paper's sequential recipe:

    steps = the block's linears grouped by the input they share, in the order the block calls them
            (true_sequential: q/k/v, then o_proj, then gate/up, then down_proj; else one step)
    for each step:
        run the block (its earlier steps already quantized) on the calibration inputs, accumulating
        the Hessian of the step's input; stop the forward there
        GPTQ each linear of the step; write the dequantized weights into the block
    next block's input: this quantized block's output

Per-linear metrics come from the Hessians themselves, so they cover every calibration token:
relative output error of RTN and of GPTQ, the dampening used and GPTQ's loss.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn as nn

from awq_core.awq import BlockResult, LinearMetrics, check_finite, quantized_linears
from awq_core.capture import StopForward, run_block
from awq_core.config import QuantConfig
from awq_core.gptq import Hessian, gptq_quantize, relative_hessian_error
from awq_core.layer_stats import relative_weight_error, spread
from awq_core.quantizer import QuantizedWeight, quantize


@torch.no_grad()
def sequential_steps(block: nn.Module, sample: torch.Tensor, block_kwargs: dict, names: list[str], true_sequential: bool) -> list[tuple[str, ...]]:
    """Group `names` (linears inside `block`) by shared input, in call order, from one sample's forward."""
    linears = dict(block.named_modules())
    calls: list[tuple[str, torch.Tensor]] = []
    handles = [
        linears[n].register_forward_pre_hook(lambda m, args, n=n: calls.append((n, args[0]))) for n in names
    ]
    try:
        run_block(block, sample, block_kwargs, batch_size=1)
    finally:
        for h in handles:
            h.remove()
    missing = sorted(set(names) - {n for n, _ in calls})
    assert not missing, f"the block's forward never calls {missing}: they cannot be calibrated"
    steps: list[list[str]] = []
    inputs: list[torch.Tensor] = []
    for name, x in calls:
        if any(name in s for s in steps):
            continue  # called twice (shared module): its first call defines its step
        for step, seen in zip(steps, inputs):
            if seen is x:  # the same tensor object: q/k/v fed by one norm output
                step.append(name)
                break
        else:
            steps.append([name])
            inputs.append(x)
    if not true_sequential:
        return [tuple(n for s in steps for n in s)]
    return [tuple(s) for s in steps]


@torch.no_grad()
def accumulate_hessians(
    block: nn.Module, hidden: torch.Tensor, block_kwargs: dict, names: tuple[str, ...], batch_size: int
) -> dict[str, Hessian]:
    """Each linear's Hessian over all calibration inputs; linears fed the same tensor share one.

    The forward of a chunk stops once every wanted linear has seen its input."""
    modules = dict(block.named_modules())
    hessians: dict[str, Hessian] = {}
    seen_inputs: list[tuple[torch.Tensor, Hessian]] = []  # within one chunk; holding the tensors keeps `is` exact
    pending: set[str] = set()

    def record(name: str) -> Callable:
        def hook(module, args):
            x = args[0]
            shared = next((h for seen, h in seen_inputs if seen is x), None)
            if shared is None:
                shared = hessians.setdefault(name, Hessian(x.shape[-1], x.device))
                shared.add(x)
                seen_inputs.append((x, shared))
            hessians.setdefault(name, shared)
            assert hessians[name] is shared, f"{name}: which linears share its input changed between chunks"
            pending.discard(name)
            if not pending:
                raise StopForward  # nothing later in the block is needed for this chunk
        return hook

    handles = [modules[n].register_forward_pre_hook(record(n)) for n in names]
    try:
        for start in range(0, hidden.shape[0], batch_size):
            seen_inputs.clear()
            pending.update(names)
            try:
                run_block(block, hidden[start : start + batch_size], block_kwargs, batch_size)
            except StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    return hessians


@torch.no_grad()
def quantize_block_gptq(
    block: nn.Module,
    index: int,
    prefix: str,
    hidden: torch.Tensor,
    block_kwargs: dict,
    config: QuantConfig,
    batch_size: int,
) -> tuple[BlockResult, torch.Tensor]:
    """GPTQ one block in place (its linears end up fake-quantized); return the result and the quantized
    block's output on `hidden` (the next block's input)."""
    start = time.perf_counter()
    check_finite(hidden, f"the input of {prefix}")
    linears = quantized_linears(block, prefix, config)
    steps = sequential_steps(block, hidden[:1], block_kwargs, list(linears), config.gptq.true_sequential)
    quantized: dict[str, QuantizedWeight] = {}
    metrics: list[LinearMetrics] = []
    for step in steps:
        hessians = accumulate_hessians(block, hidden, block_kwargs, step, batch_size)
        for name in step:
            t0 = time.perf_counter()
            linear, h = linears[name], hessians[name].value()  # (in, in)
            w = linear.weight.detach().float().clone()  # (out, in): the float weights, kept for the metrics
            result = gptq_quantize(w, h, config.w_bit, config.group_size, config.zero_point, config.gptq)
            w_hat = result.weight.dequantize()  # (out, in) float32
            rtn = quantize(w, config.w_bit, config.group_size, config.zero_point).dequantize()
            linear.weight.copy_(w_hat.to(linear.weight.dtype))
            quantized[f"{prefix}.{name}"] = result.weight
            m = LinearMetrics(f"{prefix}.{name}", index, relative_hessian_error(w, rtn, h), relative_hessian_error(w, w_hat, h))
            m.damp, m.gptq_loss = result.damp, result.loss
            m.rtn_weight_error, m.weight_error = relative_weight_error(w, rtn), relative_weight_error(w, w_hat)
            channels = spread(hessians[name].channel_mean_abs())
            m.input_max_over_mean, m.input_outlier_share = channels.max_over_mean, channels.outlier_share
            m.seconds = time.perf_counter() - t0
            metrics.append(m)
    next_hidden = run_block(block, hidden, block_kwargs, batch_size)  # (n, seqlen, hidden) from the quantized block
    check_finite(next_hidden, f"the output of {prefix}")
    return BlockResult(index, quantized, metrics, time.perf_counter() - start), next_hidden
