"""Capture what a decoder block sees: its input hidden states, its call's keyword arguments, and the
inputs of every linear inside it, so that each block can be quantized on its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from awq_core.registry import Architecture, get_blocks


class StopForward(Exception):
    """Raised from a hook once the wanted input is captured: nothing after it needs to run."""


def to_device(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def first_output(out: Any) -> torch.Tensor:
    """Blocks and attention modules return a tensor or a tuple whose first item is the hidden state."""
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def capture_block_kwargs(model: nn.Module, arch: Architecture, sample_ids: torch.Tensor) -> list[dict]:
    """The keyword arguments each block is called with (rotary embeddings, masks), from one sample.

    They depend on positions, not on the hidden states, and have batch dimension 1, so they broadcast
    over any batch of calibration samples of the same length. Per block, because some models (Gemma 3)
    give sliding-window and global layers different masks and rotary tables.
    """
    assert sample_ids.dim() == 2 and sample_ids.shape[0] == 1, "expected one sample, shape (1, seqlen)"
    blocks = get_blocks(model, arch)
    captured: list[dict | None] = [None] * len(blocks)

    def hook(index: int) -> Callable:
        def record(module, args, kwargs):
            captured[index] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        return record

    handles = [b.register_forward_pre_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        model(input_ids=sample_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    assert all(c is not None for c in captured), "some decoder blocks were not called by the model's forward"
    return [{k: v for k, v in c.items() if k not in ("past_key_values", "past_key_value")} for c in captured]


@torch.no_grad()
def capture_first_block_inputs(model: nn.Module, arch: Architecture, input_ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Hidden states entering block 0 for every calibration sample: (n_samples, seqlen, hidden)."""
    first = get_blocks(model, arch)[0]
    chunks: list[torch.Tensor] = []

    def record(module, args, kwargs):
        chunks.append((args[0] if args else kwargs["hidden_states"]).detach())
        raise StopForward

    handle = first.register_forward_pre_hook(record, with_kwargs=True)
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            try:
                model(input_ids=input_ids[start : start + batch_size], use_cache=False)
            except StopForward:
                pass
    finally:
        handle.remove()
    return torch.cat(chunks, dim=0)


@dataclass
class ModuleCall:
    """How a block calls one of its submodules, so it can be called again on other inputs."""

    module: nn.Module
    kwargs: dict = field(default_factory=dict)
    input_as_kwarg: bool = False  # called as module(hidden_states=x, ...) rather than module(x, ...)
    batch_size: int = 8  # samples per call, to bound activation memory

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outs = [first_output(self._call_once(x[i : i + self.batch_size])) for i in range(0, x.shape[0], self.batch_size)]
        return torch.cat(outs, dim=0)

    def _call_once(self, x: torch.Tensor):
        return self.module(hidden_states=x, **self.kwargs) if self.input_as_kwarg else self.module(x, **self.kwargs)


def run_block(block: nn.Module, hidden: torch.Tensor, block_kwargs: dict, batch_size: int) -> torch.Tensor:
    """Run a block over (n, seqlen, hidden) in chunks of `batch_size` samples."""
    outs = [first_output(block(hidden[i : i + batch_size], **block_kwargs)) for i in range(0, hidden.shape[0], batch_size)]
    return torch.cat(outs, dim=0)


@torch.no_grad()
def capture_block_features(
    block: nn.Module, hidden: torch.Tensor, block_kwargs: dict, inspect: list[str], batch_size: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, ModuleCall]]:
    """Run the block once, recording every linear's input and how each `inspect` module is called.

    Returns the block output (n, seqlen, hidden), each linear's input (n, seqlen, in_features) by its
    path inside the block (linears fed by the same tensor share one tensor), and the calls.
    """
    named = dict(block.named_modules())
    feats: dict[str, list[torch.Tensor]] = {}
    calls: dict[str, ModuleCall] = {}
    handles = []

    def on_linear(name: str) -> Callable:
        def record(module, args, output):
            feats.setdefault(name, []).append(args[0].detach())
        return record

    def on_inspect(name: str) -> Callable:
        def record(module, args, kwargs):
            if name not in calls:
                extra = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                calls[name] = ModuleCall(module, extra, input_as_kwarg=not args, batch_size=batch_size)
        return record

    for name, module in named.items():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(on_linear(name)))
    for name in inspect:
        handles.append(named[name].register_forward_pre_hook(on_inspect(name), with_kwargs=True))
    try:
        out = run_block(block, hidden, block_kwargs, batch_size)
    finally:
        for h in handles:
            h.remove()
    return out, _concat_shared(feats), calls


def _concat_shared(feats: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate each linear's chunks once per distinct input, so q/k/v keep one copy, not three."""
    result: dict[str, torch.Tensor] = {}
    seen: list[tuple[list[torch.Tensor], torch.Tensor]] = []
    for name, chunks in feats.items():
        for other_chunks, tensor in seen:
            if len(other_chunks) == len(chunks) and all(a is b for a, b in zip(other_chunks, chunks)):
                result[name] = tensor
                break
        else:
            result[name] = torch.cat(chunks, dim=0)
            seen.append((chunks, result[name]))
    return result
