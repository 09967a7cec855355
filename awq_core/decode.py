"""Fast decoding: a static KV cache and the one-token decode step replayed as a CUDA graph.

At batch 1 a decode step of a 7B model is a few milliseconds of GPU work split over hundreds of small
kernels; launched one by one from Python, the launches take longer than the work. A CUDA graph
launches them all at once. Its requirement: every tensor the step reads or writes keeps its address,
which transformers' static KV cache provides (its keys, values and position counter are preallocated
and updated in place, on the device).

`GraphedDecodeStep` is a callable with the model's signature. On its first call for a given cache
and input shapes it runs the step eagerly (the real step, which also warms up every kernel), then
captures the same call into a graph reading from static input buffers; later calls copy their inputs
into those buffers and replay. `enable_fast_decode` sets a model up so that `generate()` uses it: it
asks for a static cache and installs the step where transformers looks for its compiled decode call
(`get_compiled_call`, used for decode steps only, never for the prefill).

With `compile=True` the step that is captured is the model's forward compiled by `torch.compile`
(static shapes, no CUDA graphs of its own): Inductor fuses the many small per-layer ops (norms,
rotary embedding, residual adds) that remain separate kernels in the eager graph. The quantized
linears stay single custom-op calls (`triton_kernels.ops`); they read the repacked weights that the
eager prefill built. A compile failure falls back to the eager forward and says why.

`enable_fast_decode` also switches a model on SDPA attention to `awq_core.attention`, whose kernel
reads only the filled slots of the static cache and splits them over many programs, and the decoder
layers of a W4 model with fused q/k/v and gate/up to `awq_core.fused_decoder`, whose one-token steps
run their norms, activation and residual adds inside the products and, with that attention on a static
cache, their rotary embedding and cache write inside the attention kernel.

Only caches whose layers are all plain `StaticLayer`s are graphed: sliding-window static layers keep
their position in a Python integer, which a replay would not advance. Anything else (another cache,
a CPU model) runs eagerly through the same buffers. Before its first decode step such a cache is
switched to one position counter for all its layers (`static_cache.py`), which saves the kernel that
advanced each layer's own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
from transformers.cache_utils import Cache

from .attention import use_decode_attention
from .fused_decoder import fuse_decoder_layers
from .static_cache import is_device_static, share_position_counter


def _tensor_leaves(value: Any, prefix: str) -> list[tuple[str, torch.Tensor]] | None:
    """Named tensors of an input (a tensor, a dict of tensors, or a plain value); None if unsupported."""
    if isinstance(value, torch.Tensor):
        return [(prefix, value)]
    if isinstance(value, dict):  # per-layer-type attention masks
        leaves = []
        for key in sorted(value):
            sub = _tensor_leaves(value[key], f"{prefix}.{key}")
            if sub is None:
                return None
            leaves += sub
        return leaves
    if value is None or isinstance(value, (bool, int, float, str)):
        return []
    return None


def _input_leaves(inputs: dict[str, Any]) -> list[tuple[str, torch.Tensor]] | None:
    """Every tensor among a call's inputs but the cache, in a fixed order."""
    leaves = []
    for name in sorted(inputs):
        sub = [] if name == "past_key_values" else _tensor_leaves(inputs[name], name)
        if sub is None:
            return None
        leaves += sub
    return leaves


def graphable_cache(cache: Any) -> bool:
    """A cache whose every layer is an initialized plain StaticLayer (all state on the device)."""
    layers = getattr(cache, "layers", None)
    return (
        isinstance(cache, Cache) and bool(layers)
        and all(is_device_static(layer) for layer in layers)
    )  # fmt: skip


def cache_addresses(cache: Cache) -> tuple[int, ...]:
    """Where the cache's tensors live: a graph captured against them is valid only while these hold."""
    return tuple(t.data_ptr() for layer in cache.layers for t in (layer.keys, layer.values, layer.cumulative_length))


@dataclass
class CapturedStep:
    key: tuple
    inputs: dict[str, Any]  # static copies of the call's inputs (tensors) and its other arguments
    leaves: list[tuple[str, torch.Tensor]]  # (name, static buffer) of every tensor input
    graph: torch.cuda.CUDAGraph | None = None  # None: replay runs eagerly on the static buffers
    output: Any = None
    replays: int = field(default=0)


def _static_copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _static_copy(v) for k, v in value.items()}
    return value


class GraphedDecodeStep:
    """`model(**inputs)` for decode steps, replayed from a CUDA graph when the inputs allow it."""

    def __init__(
        self, model: nn.Module, use_graphs: bool = True, compile: bool = False, compile_backend: str | Callable = "inductor",
        share_counter: bool = True,
    ):
        self.model, self.use_graphs = model, use_graphs
        # Whether a graphable cache's layers are switched to one position counter (`static_cache.py`).
        self.share_counter = share_counter
        self.step: CapturedStep | None = None
        self.fallback_reason: str | None = None  # why the last call ran eagerly, if it did
        # What a step runs: the model itself, or its torch.compile'd forward (compiled on first use).
        self.forward = torch.compile(model, dynamic=False, backend=compile_backend) if compile else model

    @property
    def compiled(self) -> bool:
        """Whether steps run the compiled forward (False after a compile failure fell back to eager)."""
        return self.forward is not self.model

    def _run(self, inputs: dict[str, Any]) -> Any:
        """One step through `forward`; if compiling fails, go on eagerly and keep the reason."""
        if not self.compiled:
            return self.forward(**inputs)
        try:
            return self.forward(**inputs)
        except torch._dynamo.exc.TorchDynamoException as e:
            self.forward = self.model
            self.fallback_reason = f"torch.compile failed: {' '.join(str(e).split())[:400]}"
            return self.forward(**inputs)

    def _key(self, inputs: dict[str, Any]) -> tuple[tuple, list[tuple[str, torch.Tensor]]] | None:
        cache = inputs.get("past_key_values")
        if not graphable_cache(cache):
            self.fallback_reason = f"cache {type(cache).__name__} is not an initialized static cache of plain StaticLayers"
            return None
        if self.share_counter:
            share_position_counter(cache)  # before the key: the counters' addresses are part of it
        leaves = _input_leaves(inputs)
        if leaves is None:
            self.fallback_reason = f"an input of {sorted(inputs)} is neither a tensor, a dict of tensors nor a plain value"
            return None
        plain = [(n, v) for n, v in sorted(inputs.items()) if n != "past_key_values" and not isinstance(v, (torch.Tensor, dict))]
        shapes = tuple((n, tuple(t.shape), t.dtype, t.device) for n, t in leaves)
        return (id(cache), cache_addresses(cache), shapes, tuple(plain)), leaves

    def _graphs_possible(self, leaves: list[tuple[str, torch.Tensor]]) -> bool:
        return self.use_graphs and bool(leaves) and all(t.is_cuda for _, t in leaves)

    @torch.no_grad()
    def _capture(self, inputs: dict[str, Any], key: tuple, leaves: list[tuple[str, torch.Tensor]]) -> Any:
        """Run the real step eagerly (warming up every kernel), then capture it on static buffers."""
        self.step = None  # free the previous graph's memory pool before capturing a new one
        static = {n: (v if n == "past_key_values" else _static_copy(v)) for n, v in inputs.items()}
        step = CapturedStep(key, static, _input_leaves(static))
        if not self._graphs_possible(leaves):
            self.step = step
            return self._run(inputs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        # Warm up (and compile) on a side stream, as torch.cuda.graph's docs ask, and on the static copies:
        # they may have other strides than the inputs (a clone of an expanded mask is dense), and a compiled
        # forward that met new strides during capture would recompile there, which capture cannot hold.
        with torch.cuda.stream(stream):
            output = self._run(step.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            # Capture records kernels without running them: the cache is not advanced a second time.
            with torch.cuda.graph(graph):
                step.output = self.forward(**static)
        except RuntimeError as e:  # an op that syncs with the host or cannot be captured
            self.use_graphs, self.fallback_reason = False, f"capture failed: {str(e).splitlines()[0]}"
            step.output = None
            self.step = step
            return output
        step.graph = graph
        self.step = step
        return output

    @torch.no_grad()
    def __call__(self, **inputs) -> Any:
        found = self._key(inputs)
        if found is None:
            return self.model(**inputs)
        key, leaves = found
        if self.step is None or self.step.key != key:
            return self._capture(inputs, key, leaves)
        for (_, new), (_, buffer) in zip(leaves, self.step.leaves):
            buffer.copy_(new)
        self.step.replays += 1
        if self.step.graph is None:
            return self._run(self.step.inputs)
        self.step.graph.replay()
        output = self.step.output
        return type(output)(**{**output, "logits": output.logits.clone()})  # the graph overwrites its buffers

    @property
    def graphed(self) -> bool:
        """Whether the current step replays a CUDA graph."""
        return self.step is not None and self.step.graph is not None


def enable_fast_decode(
    model: nn.Module, use_graphs: bool = True, compile: bool = False, compile_backend: str | Callable = "inductor",
    attention: bool = True, fused_decoder: bool = True,
) -> GraphedDecodeStep:
    """Make `model.generate()` decode with a static KV cache and, on CUDA, CUDA-graph replay; with
    `compile`, of the torch.compile'd forward; with `attention`, one-token steps attend through the
    split-slot decode kernel (`awq_core.attention`, for models on SDPA); with `fused_decoder`, the decoder
    layers that `awq_core.fused_decoder` supports run one-token steps with their norms, activation and
    residual adds inside the W4 products, and their rotary embedding and cache write inside the decode
    attention kernel (a no-op for other models)."""
    if attention:
        use_decode_attention(model)
    if fused_decoder:
        fuse_decoder_layers(model)
    step = GraphedDecodeStep(model, use_graphs, compile, compile_backend)
    model.generation_config.cache_implementation = "static"
    # transformers calls get_compiled_call for decode steps when the cache is static and the model is on a
    # GPU; what it returns runs each decode step. Ours replays a graph instead of running torch.compile.
    model.get_compiled_call = lambda compile_config=None: step
    model.fast_decode_step = step
    return step
