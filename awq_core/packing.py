"""AutoAWQ checkpoint layouts: a `QuantizedWeight` <-> the `qweight` / `qzeros` / `scales` tensors on disk.

The bit work lives in `triton_kernels.awq_layout`; this file only arranges the tensors the way
AutoAWQ's `WQLinear_GEMM` and `WQLinear_GEMV` write them, so that transformers and vLLM load them.

- GEMM: qweight (in, out / 8), qzeros (in / g, out / 8), both in nibble order [0, 2, 4, 6, 1, 3, 5, 7];
  scales (in / g, out) fp16.
- GEMV: qweight (out, in / 8), qzeros (out, zeros_width), both in sequential order;
  scales (out, zeros_width * 8) fp16; groups past `in / g` are zero padding.
"""
from __future__ import annotations

import torch

from awq_core.config import Version
from awq_core.quantizer import SCALE_DTYPE, QuantizedWeight, resolve_group_size
from triton_kernels.awq_layout import AWQ_GEMM_ORDER, SEQUENTIAL_ORDER_4BIT, pack_int32, unpack_int32

AWQ_BITS = 4  # the only width AutoAWQ's layouts (and the kernels that read them) define
PACK_NUM = 32 // AWQ_BITS  # 4-bit values per int32 word


def check_awq_bits(w_bit: int) -> None:
    assert w_bit == AWQ_BITS, (
        f"w_bit={w_bit}: the AutoAWQ GEMM/GEMV layouts store 4-bit weights only; quantize with w_bit=4"
    )


def calculate_zeros_width(in_features: int, group_size: int) -> int:
    """Packed-zeros columns of the GEMV layout, as AutoAWQ computes them (its kernels read this padding)."""
    g = resolve_group_size(group_size, in_features)
    multipliers = {32: 4, 64: 2}  # g >= 128 -> 1
    if g < 128 and g not in multipliers:
        raise ValueError(f"the GEMV layout supports group sizes 32, 64 and >= 128, got {g} (in_features={in_features})")
    multiplier = 1 if g >= 128 else multipliers[g]
    words = -(-(in_features // g) // PACK_NUM)  # groups rounded up to whole words
    return -(-words // multiplier) * multiplier  # then to a multiple of the size multiplier


# ---- GEMM ----------------------------------------------------------------------------------------


def pack_awq_gemm(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    check_awq_bits(qw.w_bit)
    out_features, in_features = qw.q.shape
    assert out_features % PACK_NUM == 0, f"GEMM layout needs out_features % 8 == 0, got out_features={out_features}"
    qweight = pack_int32(qw.q.t(), AWQ_BITS, AWQ_GEMM_ORDER)  # (in, out / 8)
    qzeros = pack_int32(qw.zeros.t(), AWQ_BITS, AWQ_GEMM_ORDER)  # (in / g, out / 8)
    scales = qw.scales.t().to(SCALE_DTYPE).contiguous()  # (in / g, out)
    return {"qweight": qweight.contiguous(), "qzeros": qzeros.contiguous(), "scales": scales}


def unpack_awq_gemm(tensors: dict[str, torch.Tensor], group_size: int) -> QuantizedWeight:
    qweight, qzeros, scales = tensors["qweight"], tensors["qzeros"], tensors["scales"]
    in_features, out_features = qweight.shape[0], qweight.shape[1] * PACK_NUM
    g = resolve_group_size(group_size, in_features)
    groups = in_features // g
    assert qzeros.shape == (groups, out_features // PACK_NUM), (
        f"GEMM qzeros shape {tuple(qzeros.shape)} != {(groups, out_features // PACK_NUM)} for in={in_features}, g={g}"
    )
    assert scales.shape == (groups, out_features), (
        f"GEMM scales shape {tuple(scales.shape)} != {(groups, out_features)} for in={in_features}, g={g}"
    )
    q = unpack_int32(qweight, AWQ_BITS, AWQ_GEMM_ORDER).t()  # (out, in)
    zeros = unpack_int32(qzeros, AWQ_BITS, AWQ_GEMM_ORDER).t()  # (out, in / g)
    scales = scales.t().float()  # (out, in / g)
    return QuantizedWeight(q.contiguous(), scales.contiguous(), zeros.contiguous(), w_bit=AWQ_BITS, group_size=g)


# ---- GEMV ----------------------------------------------------------------------------------------


def pack_awq_gemv(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    check_awq_bits(qw.w_bit)
    out_features, in_features = qw.q.shape
    assert in_features % PACK_NUM == 0, f"GEMV layout needs in_features % 8 == 0, got in_features={in_features}"
    assert out_features % PACK_NUM == 0, f"GEMV layout needs out_features % 8 == 0, got out_features={out_features}"
    groups = in_features // qw.group_size
    width = calculate_zeros_width(in_features, qw.group_size)
    zeros = torch.zeros(out_features, width * PACK_NUM, dtype=torch.int32, device=qw.zeros.device)
    zeros[:, :groups] = qw.zeros  # (out, width * 8), zero-padded like AutoAWQ
    scales = torch.zeros(out_features, width * PACK_NUM, dtype=SCALE_DTYPE, device=qw.scales.device)
    scales[:, :groups] = qw.scales.to(SCALE_DTYPE)  # (out, width * 8)
    return {
        "qweight": pack_int32(qw.q, AWQ_BITS, SEQUENTIAL_ORDER_4BIT).contiguous(),  # (out, in / 8)
        "qzeros": pack_int32(zeros, AWQ_BITS, SEQUENTIAL_ORDER_4BIT).contiguous(),  # (out, width)
        "scales": scales,
    }


def unpack_awq_gemv(tensors: dict[str, torch.Tensor], group_size: int) -> QuantizedWeight:
    qweight, qzeros, scales = tensors["qweight"], tensors["qzeros"], tensors["scales"]
    out_features, in_features = qweight.shape[0], qweight.shape[1] * PACK_NUM
    g = resolve_group_size(group_size, in_features)
    groups = in_features // g
    width = calculate_zeros_width(in_features, g)
    assert qzeros.shape == (out_features, width), (
        f"GEMV qzeros shape {tuple(qzeros.shape)} != {(out_features, width)} for in={in_features}, g={g}"
    )
    assert scales.shape == (out_features, width * PACK_NUM), (
        f"GEMV scales shape {tuple(scales.shape)} != {(out_features, width * PACK_NUM)} for in={in_features}, g={g}"
    )
    q = unpack_int32(qweight, AWQ_BITS, SEQUENTIAL_ORDER_4BIT)  # (out, in)
    zeros = unpack_int32(qzeros, AWQ_BITS, SEQUENTIAL_ORDER_4BIT)[:, :groups]  # drop the padding: (out, in / g)
    scales = scales[:, :groups].float()  # (out, in / g)
    return QuantizedWeight(q.contiguous(), scales.contiguous(), zeros.contiguous(), w_bit=AWQ_BITS, group_size=g)


# ---- either --------------------------------------------------------------------------------------


def pack_awq(qw: QuantizedWeight, version: Version | str) -> dict[str, torch.Tensor]:
    return pack_awq_gemm(qw) if Version.parse(version) is Version.GEMM else pack_awq_gemv(qw)


def unpack_awq(tensors: dict[str, torch.Tensor], group_size: int, version: Version | str) -> QuantizedWeight:
    unpack = unpack_awq_gemm if Version.parse(version) is Version.GEMM else unpack_awq_gemv
    return unpack(tensors, group_size)


def packed_shapes(
    in_features: int, out_features: int, group_size: int, version: Version | str
) -> dict[str, tuple[int, int]]:
    """Shapes of the packed tensors of one layer: what an empty layer allocates and a loader checks."""
    g = resolve_group_size(group_size, in_features)
    if Version.parse(version) is Version.GEMM:
        return {
            "qweight": (in_features, out_features // PACK_NUM),
            "qzeros": (in_features // g, out_features // PACK_NUM),
            "scales": (in_features // g, out_features),
        }
    width = calculate_zeros_width(in_features, g)
    return {
        "qweight": (out_features, in_features // PACK_NUM),
        "qzeros": (out_features, width),
        "scales": (out_features, width * PACK_NUM),
    }
