"""`GPTQLinear`: a linear layer stored in the GPTQ checkpoint layout (2, 3, 4 or 8 bits, `g_idx`).

Its buffers are named and shaped as AutoGPTQ's, so `state_dict()` is the checkpoint format. The forward
paths are `WQLinear`'s: the torch reference everywhere (dequantize through `g_idx`, then `F.linear`),
and for 4-bit layers on a CUDA GPU the same fused Triton kernels, fed once with the weight converted
to the AutoAWQ GEMM layout in memory. Act-order layers (groups not in column order) first sort their
input columns by group, so each group is one contiguous run again, and gather the activations' columns
in that order on every call: one cheap index_select instead of a second kernel family.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
import triton_kernels
from triton_kernels import LinearFusion, PreparedWeight

from awq_core.gptq_packing import check_gptq_bits, pack_gptq, packed_shapes_gptq, unpack_gptq
from awq_core.packing import AWQ_BITS, PACK_NUM, pack_awq_gemm
from awq_core.qlinear import KernelMode, WQLinear, _PreparedKey, _version_counter
from awq_core.quantizer import SCALE_DTYPE, QuantizedWeight, check_group_size
from triton_kernels.prepare import SLAB_K


class GPTQLinear(WQLinear):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        w_bit: int = 4,
        group_size: int = 128,
        dtype: torch.dtype = SCALE_DTYPE,
        device: torch.device | str | None = None,
    ):
        nn.Module.__init__(self)  # WQLinear's buffers are the AWQ layout's: build GPTQ's instead
        layer = f"Linear(in_features={in_features}, out_features={out_features})"
        check_gptq_bits(w_bit)
        self.group_size = check_group_size(group_size, in_features, layer)
        self.in_features, self.out_features, self.w_bit = in_features, out_features, w_bit
        try:
            shapes = packed_shapes_gptq(in_features, out_features, w_bit, self.group_size)
        except ValueError as e:
            raise ValueError(f"{layer}: {e}") from None
        self.register_buffer("qweight", torch.zeros(shapes["qweight"], dtype=torch.int32, device=device))
        self.register_buffer("qzeros", torch.zeros(shapes["qzeros"], dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.zeros(shapes["scales"], dtype=dtype, device=device))
        self.register_buffer("g_idx", torch.zeros(shapes["g_idx"], dtype=torch.int32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        self.kernel = KernelMode.AUTO
        self._prepared = None  # (key, PreparedWeight, column order or None): never saved

    @classmethod
    def empty(cls, in_features, out_features, bias, w_bit, group_size, dtype=SCALE_DTYPE, device="meta") -> "GPTQLinear":
        """A layer to load a checkpoint into (on the meta device by default: nothing is allocated)."""
        return cls(in_features, out_features, bias, w_bit, group_size, dtype, device)

    @classmethod
    def from_linear(cls, linear: nn.Linear, qw: QuantizedWeight, dtype: torch.dtype = SCALE_DTYPE) -> "GPTQLinear":
        """Pack `qw`, the quantized weight of `linear`, and keep `linear`'s bias."""
        assert tuple(qw.q.shape) == (linear.out_features, linear.in_features), (
            f"quantized weight shape {tuple(qw.q.shape)} does not match "
            f"Linear(in_features={linear.in_features}, out_features={linear.out_features})"
        )
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, qw.w_bit, qw.group_size, dtype,
                    linear.weight.device)  # fmt: skip
        for name, tensor in pack_gptq(qw).items():
            getattr(layer, name).copy_(tensor)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    def quantized_weight(self) -> QuantizedWeight:
        tensors = {"qweight": self.qweight, "qzeros": self.qzeros, "scales": self.scales, "g_idx": self.g_idx}
        return unpack_gptq(tensors, self.w_bit, self.group_size)

    def _kernel_shape_ok(self) -> bool:
        """The fused kernels take 4-bit weights, 8-column words of outputs and groups of whole 16-row slabs."""
        return self.w_bit == AWQ_BITS and self.out_features % PACK_NUM == 0 and self.group_size % SLAB_K == 0

    def _kernel_order(self, qw: QuantizedWeight) -> torch.Tensor | None:
        """Input column order that makes every group contiguous (None: already is), or an error."""
        if qw.g_idx is None:
            return None
        counts = torch.bincount(qw.g_idx.long(), minlength=qw.scales.shape[1])
        assert bool((counts == self.group_size).all()), (
            "g_idx does not give every group group_size columns: the fused kernels cannot run it; use kernel='torch'"
        )
        return torch.argsort(qw.g_idx, stable=True)  # (in,)

    def prepared_weight(self, dtype: torch.dtype) -> PreparedWeight:
        return self._prepare(dtype)[0]

    def _prepare(self, dtype: torch.dtype) -> tuple[PreparedWeight, torch.Tensor | None]:
        key = _PreparedKey(self.qweight.device, dtype, tuple((t.data_ptr(), _version_counter(t)) for t in
                           (self.qweight, self.qzeros, self.scales, self.g_idx)))  # fmt: skip
        if self._prepared is not None and self._prepared[0] == key:
            return self._prepared[1], self._prepared[2]
        self._prepared = None
        qw = self.quantized_weight()
        order = self._kernel_order(qw)
        if order is not None:  # sort the columns by group: then group i is columns [i * g, (i + 1) * g)
            qw = QuantizedWeight(qw.q[:, order].contiguous(), qw.scales, qw.zeros, qw.w_bit, qw.group_size)
        awq = pack_awq_gemm(qw)
        prepared = triton_kernels.prepare(awq["qweight"], awq["qzeros"], awq["scales"].to(dtype), self.group_size)
        self._prepared = (key, prepared, order)
        return prepared, order

    def _triton_matmul(self, x: torch.Tensor, mode: KernelMode, fusion: LinearFusion | None = None) -> torch.Tensor:
        if torch.compiler.is_compiling() and self._compiled_prepared(x) is not None:
            order = self._prepared[2]  # built by an eager call (see WQLinear._compiled_prepared)
        else:
            order = self._prepare(x.dtype)[1]
        if order is not None:
            x = x.index_select(-1, order.to(x.device))  # (..., in) columns in group order
            if fusion is not None and fusion.norm_weight is not None:  # the norm's weight in the same order
                fusion = replace(fusion, norm_weight=fusion.norm_weight.index_select(0, order.to(x.device)))
        return super()._triton_matmul(x, mode, fusion)  # reads the same cached PreparedWeight

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"w_bit={self.w_bit}, group_size={self.group_size}, format=gptq"
        )
