"""`WQLinear`: a linear layer whose weight is stored packed in an AutoAWQ layout (GEMM or GEMV).

Its buffers are named and shaped exactly as AutoAWQ's, so `state_dict()` is the checkpoint format.
`forward` runs `_matmul`: on a supported CUDA GPU the fused Triton W4A16 kernels of `triton_kernels`
(on a `PreparedWeight` repacked once, lazily, and cached), elsewhere the torch reference (dequantize,
then `F.linear`). `kernel` (see `KernelMode`, `set_kernel`) forces one path, e.g. to compare them.
"""
from __future__ import annotations

import enum
import os
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import triton_kernels
from triton_kernels import KernelChoice, LinearFusion, PreparedWeight
from triton_kernels.fusion import reference_fusion
from triton_kernels.dispatch import MIN_CAPABILITY
from triton_kernels.ops import device_capability
from triton_kernels.prepare import SLAB_K

from awq_core.packing import (
    PACK_NUM,
    SCALE_DTYPE,
    Version,
    check_awq_bits,
    pack_awq,
    packed_shapes,
    unpack_awq,
)
from awq_core.quantizer import QuantizedWeight, check_group_size

GEMV_MAX_ROWS = 8  # the GEMV's register tile holds at most this many rows of x (`GemvConfig.max_m`)
KERNEL_DTYPES = (torch.float16, torch.bfloat16)  # activation dtypes the fused kernels take


class KernelMode(str, enum.Enum):
    """Which path `WQLinear.forward` takes."""

    AUTO = "auto"  # Triton kernels (dispatched by M) on a supported CUDA GPU, the torch reference elsewhere
    GEMV = "gemv"  # force the fused GEMV (rows beyond GEMV_MAX_ROWS go through it in chunks)
    GEMM = "gemm"  # force the fused tensor-core GEMM (the weight-as-register-operand one, `gemm_swapped.py`)
    TORCH = "torch"  # force the torch reference: dequantize, then F.linear

    @classmethod
    def parse(cls, value: "KernelMode | str") -> "KernelMode":
        text = value.value if isinstance(value, enum.Enum) else str(value)
        try:
            return cls(text.lower())
        except ValueError:
            raise ValueError(f"unknown kernel {value!r}: expected one of {[m.value for m in cls]}") from None


# "gemm" names the tensor-core GEMM that the dispatch picks for batches (M = 2..1024 on the H100)
FORCED_CHOICE = {KernelMode.GEMV: KernelChoice.GEMV, KernelMode.GEMM: KernelChoice.GEMM_SWAPPED}


class _PreparedKey(NamedTuple):
    """What the cached PreparedWeight was built from: any change (device, dtype, new or edited buffer) rebuilds it."""

    device: torch.device
    dtype: torch.dtype
    buffers: tuple[tuple[int, int], ...]  # (data_ptr, in-place version counter) of qweight, qzeros, scales


def _version_counter(t: torch.Tensor) -> int:
    """In-place edits (`copy_`, `load_state_dict`) bump it; inference-mode tensors cannot be edited, so have none."""
    return -1 if t.is_inference() else t._version


def _check_layer(in_features: int, out_features: int, w_bit: int, group_size: int, version: Version) -> int:
    """Fail before allocating anything when the layer cannot be stored in the layout; return the group size."""
    layer = f"Linear(in_features={in_features}, out_features={out_features})"
    check_awq_bits(w_bit)
    g = check_group_size(group_size, in_features, layer)
    if out_features % PACK_NUM != 0:
        raise ValueError(f"{layer}: out_features must be a multiple of {PACK_NUM} to pack 4-bit weights")
    if version is Version.GEMV and in_features % PACK_NUM != 0:
        raise ValueError(f"{layer}: the GEMV layout needs in_features to be a multiple of {PACK_NUM}")
    return g


class WQLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        w_bit: int = 4,
        group_size: int = 128,
        version: Version | str = Version.GEMM,
        dtype: torch.dtype = SCALE_DTYPE,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.version = Version.parse(version)
        self.group_size = _check_layer(in_features, out_features, w_bit, group_size, self.version)
        self.in_features, self.out_features, self.w_bit = in_features, out_features, w_bit
        shapes = packed_shapes(in_features, out_features, self.group_size, self.version)
        self.register_buffer("qweight", torch.zeros(shapes["qweight"], dtype=torch.int32, device=device))
        self.register_buffer("qzeros", torch.zeros(shapes["qzeros"], dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.zeros(shapes["scales"], dtype=dtype, device=device))
        # A buffer, like AutoAWQ's, so that every tensor of the layer loads the same way.
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        self.kernel = KernelMode.AUTO
        self._prepared: tuple[_PreparedKey, PreparedWeight] | None = None  # not a buffer: never saved

    @classmethod
    def empty(
        cls,
        in_features: int,
        out_features: int,
        bias: bool,
        w_bit: int,
        group_size: int,
        version: Version | str,
        dtype: torch.dtype = SCALE_DTYPE,
        device: torch.device | str | None = "meta",
    ) -> "WQLinear":
        """A layer to load a checkpoint into (on the meta device by default: nothing is allocated)."""
        return cls(in_features, out_features, bias, w_bit, group_size, version, dtype, device)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, qw: QuantizedWeight, version: Version | str, dtype: torch.dtype = SCALE_DTYPE
    ) -> "WQLinear":
        """Pack `qw`, the quantized weight of `linear`, and keep `linear`'s bias."""
        assert tuple(qw.q.shape) == (linear.out_features, linear.in_features), (
            f"quantized weight shape {tuple(qw.q.shape)} does not match "
            f"Linear(in_features={linear.in_features}, out_features={linear.out_features})"
        )
        device = linear.weight.device
        layer = cls(
            linear.in_features, linear.out_features, linear.bias is not None,
            qw.w_bit, qw.group_size, version, dtype, device,
        )  # fmt: skip
        for name, tensor in pack_awq(qw, layer.version).items():
            getattr(layer, name).copy_(tensor)  # copy_ casts scales to the layer's dtype and device
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    def quantized_weight(self) -> QuantizedWeight:
        tensors = {"qweight": self.qweight, "qzeros": self.qzeros, "scales": self.scales}
        return unpack_awq(tensors, self.group_size, self.version)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """`(q - zeros) * scales` computed in float32: (out, in) in `dtype` (default: the scales' dtype)."""
        w = self.quantized_weight().dequantize()  # (out, in) float32
        return w.to(dtype or self.scales.dtype)

    def set_kernel(self, kernel: KernelMode | str) -> None:
        self.kernel = KernelMode.parse(kernel)

    def _apply(self, fn, *args, **kwargs):
        self._prepared = None  # `.to()` / `.half()` move or cast the buffers: free the stale repack now
        return super()._apply(fn, *args, **kwargs)

    def _torch_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """The reference: dequantize in float32, round to x's dtype, then F.linear."""
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def _torch_path(self, x: torch.Tensor, fusion: LinearFusion | None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The reference product, with the fusion's ops around it as PyTorch ops."""
        return self._torch_matmul(x) if fusion is None else reference_fusion(x, self._torch_matmul, fusion)

    def _kernel_shape_ok(self) -> bool:
        """The fused kernels read 16-row slabs of K: every group must hold whole slabs."""
        return self.group_size % SLAB_K == 0

    def _triton_available(self, x: torch.Tensor) -> bool:
        """AUTO takes the kernels only here: CUDA, a new enough GPU, fp16/bf16, a shape they tile."""
        if not x.is_cuda or x.dtype not in KERNEL_DTYPES or not self._kernel_shape_ok():
            return False
        capability = device_capability(x.device)
        return capability is not None and capability >= MIN_CAPABILITY

    def _compiled_prepared(self, x: torch.Tensor) -> PreparedWeight | None:
        """While torch.compile traces: the cached repack if one was built for x's device and dtype, else None.

        The cache check of `prepared_weight` reads buffer addresses and version counters, which Dynamo
        cannot trace (a graph break per layer). A traced graph instead reads the repack an eager call
        built, as graph inputs; Dynamo guards on the module, so a rebuilt repack recompiles."""
        if self._prepared is None:
            return None
        key, prepared = self._prepared[0], self._prepared[1]  # GPTQLinear adds a third item: its column order
        return prepared if key.device == x.device and key.dtype == x.dtype else None

    def prepared_weight(self, dtype: torch.dtype) -> PreparedWeight:
        """The kernels' repacked weight (scales in `dtype`), built on first use and cached until a buffer changes."""
        key = _PreparedKey(
            self.qweight.device, dtype,
            tuple((t.data_ptr(), _version_counter(t)) for t in (self.qweight, self.qzeros, self.scales)),
        )  # fmt: skip
        if self._prepared is not None and self._prepared[0] == key:
            return self._prepared[1]
        self._prepared = None  # drop the stale copy before allocating the new one
        if self.version is Version.GEMM:
            qweight, qzeros, scales = self.qweight, self.qzeros, self.scales
        else:  # GEMV layout: through the integers to the GEMM layout that `prepare` reads
            gemm = pack_awq(self.quantized_weight(), Version.GEMM)
            qweight, qzeros = gemm["qweight"], gemm["qzeros"]
            scales = self.scales[:, : self.in_features // self.group_size].t().contiguous()  # (in / g, out), exact
        prepared = triton_kernels.prepare(qweight, qzeros, scales.to(dtype), self.group_size)
        self._prepared = (key, prepared)
        return prepared

    def _triton_matmul(self, x: torch.Tensor, mode: KernelMode, fusion: LinearFusion | None = None) -> torch.Tensor:
        compiled = self._compiled_prepared(x) if torch.compiler.is_compiling() else None
        weight = compiled if compiled is not None else self.prepared_weight(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        choice = FORCED_CHOICE.get(mode)  # None: dispatch on M
        if choice is KernelChoice.GEMV and x.numel() // self.in_features > GEMV_MAX_ROWS:
            if fusion is not None:  # the ops around the row chunks' products, as PyTorch ops
                return reference_fusion(x, lambda normed: self._triton_matmul(normed, mode), fusion)
            rows = x.reshape(-1, self.in_features)  # (M, in)
            parts = [triton_kernels.w4a16_linear(r, weight, bias, choice) for r in rows.split(GEMV_MAX_ROWS)]
            return torch.cat(parts).reshape(*x.shape[:-1], self.out_features)
        return triton_kernels.w4a16_linear(x, weight, bias, choice, fusion)

    def _matmul(self, x: torch.Tensor, fusion: LinearFusion | None = None) -> torch.Tensor:
        mode = self.kernel
        if mode is KernelMode.TORCH:
            return self._torch_path(x, fusion)
        if torch.compiler.is_compiling() and self._compiled_prepared(x) is not None:
            return self._triton_matmul(x, mode, fusion)  # an eager call already chose the kernels and built the repack
        if mode is KernelMode.AUTO:
            return self._triton_matmul(x, mode, fusion) if self._triton_available(x) else self._torch_path(x, fusion)
        # Forced GEMV / GEMM: a CUDA GPU, or Triton's CPU interpreter (the tests).
        assert x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1", (
            f"kernel={mode.value} on {x.device} needs a CUDA device or TRITON_INTERPRET=1; use 'auto' or 'torch'"
        )
        assert x.dtype in KERNEL_DTYPES, f"kernel={mode.value} takes fp16 or bf16 activations, got {x.dtype}"
        assert self._kernel_shape_ok(), f"kernel={mode.value}: group_size={self.group_size} is not a multiple of 16"
        return self._triton_matmul(x, mode, fusion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._matmul(x)  # (..., in) -> (..., out)

    def fused_forward(self, x: torch.Tensor, fusion: LinearFusion) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The product with the ops of `fusion` around it (`triton_kernels/fusion.py`): an RMSNorm of x before,
        silu(gate) * up and a residual after; (..., in) -> (..., out, or out / 2 with glu), and with the fusion's
        `scaled_output_weight` also the output times that weight."""
        return self._matmul(x, fusion)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"w_bit={self.w_bit}, group_size={self.group_size}, version={self.version.value}"
        )


def set_kernel(model: nn.Module, kernel: KernelMode | str) -> int:
    """Set the path of every `WQLinear` in `model`; returns how many layers were set."""
    mode = KernelMode.parse(kernel)
    layers = [m for m in model.modules() if isinstance(m, WQLinear)]
    for layer in layers:
        layer.set_kernel(mode)
    return len(layers)
