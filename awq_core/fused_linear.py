"""Fuse linears that read the same input (q/k/v, gate/up) into one wider linear, at load time.

One W4 product of width q+k+v reads the input once and launches one kernel instead of three; at
batch 1 that is most of a decode step's linear time (see benchmarks/README.md: 12288x4096 takes
21 us fused against 3 x 12 us as three 4096x4096 products).

How the model's own code keeps working: each original projection (`q_proj`, ...) is replaced by a
`LinearShard` that returns its slice of the fused output, and the fused product is computed once per
input tensor and shared by the shards that receive that same tensor. We chose this over patching
the attention/MLP `forward`s because those differ per architecture and change between transformers
releases, while every supported architecture calls its projections as `proj(hidden_states)` on one
tensor: the shards only rely on that. The shared product is keyed on the input's identity and its
in-place version counter, so a changed or new input always recomputes, and it is dropped as soon as
every shard has taken its slice.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from awq_core.packing import Version
from awq_core.qlinear import WQLinear, _version_counter
from awq_core.registry import detect_architecture, get_blocks, get_module

# The packed dimension that holds out_features, per layout: concatenating along it stacks outputs.
OUT_DIM = {Version.GEMM: 1, Version.GEMV: 0}  # GEMM: (in, out / 8), (in / g, out); GEMV: (out, ...)


class FusedLinear(nn.Module):
    """One linear computing the outputs of several linears that read the same input, concatenated."""

    def __init__(self, linear: nn.Module, names: tuple[str, ...], sizes: tuple[int, ...]):
        super().__init__()
        assert sum(sizes) == linear.out_features, f"shard sizes {sizes} do not add up to {linear.out_features}"
        self.linear, self.names, self.sizes = linear, names, sizes
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self._input: torch.Tensor | None = None  # the tensor the shared output was computed from
        self._input_version = -1
        self._output: torch.Tensor | None = None  # (..., sum(sizes))
        self._served: set[int] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)  # (..., in) -> (..., sum(sizes))

    def shard_output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Shard `index`'s slice of the fused product of `x`, computing the product once per input."""
        # While torch.compile traces, identity alone: Dynamo cannot read version counters, and a traced
        # graph holds no in-place edits between the shards' calls on one tensor.
        version = -1 if torch.compiler.is_compiling() else _version_counter(x)
        fresh = x is self._input and version == self._input_version and index not in self._served
        if not fresh:
            self._input, self._input_version, self._served = x, version, set()
            self._output = self.linear(x)
        self._served.add(index)
        out = self._output[..., self.offsets[index] : self.offsets[index + 1]]  # (..., sizes[index]) view
        if len(self._served) == len(self.sizes):
            self._input = self._output = None  # every shard has its slice: hold no activations between calls
        return out

    def extra_repr(self) -> str:
        return f"shards={dict(zip(self.names, self.sizes))}"


class LinearShard(nn.Module):
    """Stands where one fused linear stood; its parameters live in the `FusedLinear`."""

    def __init__(self, fused: FusedLinear, index: int):
        super().__init__()
        self.__dict__["fused"] = fused  # not a submodule: the parent registers the fused linear once
        self.index = index
        self.in_features, self.out_features = fused.linear.in_features, fused.sizes[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.shard_output(self.index, x)

    def extra_repr(self) -> str:
        return f"{self.fused.names[self.index]} of {self.fused.names}, out_features={self.out_features}"


# ---- building a fused linear ---------------------------------------------------------------------


def _fusable(linears: list[nn.Module]) -> bool:
    """Same input width and the same storage: all WQLinear with one layout, or all nn.Linear of one dtype."""
    first = linears[0]
    if any(l.in_features != first.in_features for l in linears):
        return False
    if all(type(l) is WQLinear for l in linears):
        same = lambda l: (l.w_bit, l.group_size, l.version, l.scales.dtype, l.qweight.device, l.kernel)  # noqa: E731
        return all(same(l) == same(first) for l in linears)
    if all(type(l) is nn.Linear for l in linears):
        return all((l.weight.dtype, l.weight.device) == (first.weight.dtype, first.weight.device) for l in linears)
    return False  # mixed (some excluded from quantization) or other module types: leave them alone


def _biases(linears: list[nn.Module], dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    if all(l.bias is None for l in linears):
        return None
    return torch.cat([
        l.bias.detach().to(dtype) if l.bias is not None else torch.zeros(l.out_features, dtype=dtype, device=device)
        for l in linears
    ])  # fmt: skip  # (sum(out),)


@torch.no_grad()
def concat_wqlinears(linears: list[WQLinear]) -> WQLinear:
    """A WQLinear whose outputs are the parts' outputs, concatenated: the packed buffers stacked along
    the out dimension (each part's out_features is a multiple of 8, so no packed word straddles two)."""
    first = linears[0]
    dim = OUT_DIM[first.version]
    bias = _biases(linears, first.scales.dtype, first.qweight.device)
    fused = WQLinear.empty(
        first.in_features, sum(l.out_features for l in linears), bias is not None,
        first.w_bit, first.group_size, first.version, first.scales.dtype, device="meta",
    )  # fmt: skip
    for name in ("qweight", "qzeros", "scales"):
        setattr(fused, name, torch.cat([getattr(l, name) for l in linears], dim=dim))
    fused.bias = bias
    fused.set_kernel(first.kernel)
    return fused


@torch.no_grad()
def concat_linears(linears: list[nn.Linear]) -> nn.Linear:
    first = linears[0]
    weight = torch.cat([l.weight for l in linears])  # (sum(out), in)
    bias = _biases(linears, weight.dtype, weight.device)
    fused = nn.Linear(first.in_features, weight.shape[0], bias=bias is not None, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


def fuse_group(parent: nn.Module, names: tuple[str, ...]) -> bool:
    """Replace `parent.<name>` for each name by a shard of one fused linear; False if they cannot fuse."""
    linears = [getattr(parent, n) for n in names]
    if not _fusable(linears):
        return False
    concat = concat_wqlinears if type(linears[0]) is WQLinear else concat_linears
    fused = FusedLinear(concat(linears), names, tuple(l.out_features for l in linears))
    setattr(parent, "fused_" + "_".join(names), fused)
    for index, name in enumerate(names):
        setattr(parent, name, LinearShard(fused, index))
    return True


def fuse_linears(model: nn.Module) -> int:
    """Fuse, in every decoder block, each group of linears that one norm feeds (q/k/v, gate/up), as the
    architecture registry lists them. Returns how many groups were fused. Works on WQLinear and float
    nn.Linear alike; a fused model cannot be saved (load the checkpoint without fusing to save it)."""
    arch = detect_architecture(model.config)
    fused = 0
    for block in get_blocks(model, arch):
        for group in arch.groups:
            if len(group.linears) < 2:
                continue
            parents = {path.rpartition(".")[0] for path in group.linears}
            assert len(parents) == 1, f"group {group.linears} spans several modules: cannot fuse it"
            parent = get_module(block, parents.pop())
            fused += fuse_group(parent, tuple(path.rpartition(".")[2] for path in group.linears))
    return fused


def is_fused(model: nn.Module) -> bool:
    return any(isinstance(m, FusedLinear) for m in model.modules())
