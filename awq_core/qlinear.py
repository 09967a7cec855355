"""`WQLinear`: a linear layer whose weight is stored packed in an AutoAWQ layout (GEMM or GEMV).

Its buffers are named and shaped exactly as AutoAWQ's, so `state_dict()` is the checkpoint format.
`forward` is the torch reference (dequantize, then `F.linear`); fused kernels replace `_matmul` only.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

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

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        # Torch reference; a fused dequantize-matmul kernel replaces this method and nothing else.
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._matmul(x)  # (..., in) -> (..., out)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"w_bit={self.w_bit}, group_size={self.group_size}, version={self.version.value}"
        )
