"""AutoAWQ GEMM / GEMV layouts: exact round trips, byte-level nibble order, GEMV padding."""
from enum import Enum

import pytest
import torch

from awq_core.packing import (
    Version,
    calculate_zeros_width,
    pack_awq,
    pack_awq_gemm,
    pack_awq_gemv,
    packed_shapes,
    unpack_awq,
    unpack_awq_gemm,
    unpack_awq_gemv,
)
from awq_core.quantizer import QuantizedWeight, quantize, resolve_group_size
from triton_kernels.awq_layout import dequantize_awq_gemm

# (in_features, out_features, group_size): every supported group size, 576 = 9 groups of 64.
SHAPES = [
    (64, 8, 32),
    (64, 16, -1),
    (128, 64, 64),
    (256, 48, 128),
    (576, 64, 64),
    (576, 32, 32),
    (576, 24, -1),
    (1024, 40, 128),
    (96, 32, 32),
]


def random_qw(in_features: int, out_features: int, group_size: int, seed: int = 0) -> QuantizedWeight:
    """Integers over the full range 0..15 (15 in the top nibble sets the int32 sign bit)."""
    gen = torch.Generator().manual_seed(seed)
    g = resolve_group_size(group_size, in_features)
    groups = in_features // g
    return QuantizedWeight(
        q=torch.randint(0, 16, (out_features, in_features), generator=gen, dtype=torch.int32),
        scales=torch.rand(out_features, groups, generator=gen) * 0.1 + 1e-3,
        zeros=torch.randint(0, 16, (out_features, groups), generator=gen, dtype=torch.int32),
        w_bit=4,
        group_size=g,
    )


@pytest.mark.parametrize("version", list(Version))
@pytest.mark.parametrize("in_features,out_features,group_size", SHAPES)
def test_round_trip_is_exact(version, in_features, out_features, group_size):
    qw = random_qw(in_features, out_features, group_size)
    packed = pack_awq(qw, version)
    shapes = packed_shapes(in_features, out_features, group_size, version)
    assert {k: tuple(t.shape) for k, t in packed.items()} == shapes
    assert packed["qweight"].dtype == packed["qzeros"].dtype == torch.int32
    assert packed["scales"].dtype == torch.float16

    back = unpack_awq(packed, group_size, version)
    assert back.group_size == qw.group_size and back.w_bit == 4
    assert torch.equal(back.q, qw.q)
    assert torch.equal(back.zeros, qw.zeros)
    assert torch.equal(back.scales, qw.scales.half().float())  # scales are stored in fp16


def test_round_trip_of_real_quantization():
    w = torch.randn(64, 576)
    qw = quantize(w, 4, 64)
    for pack, unpack in [(pack_awq_gemm, unpack_awq_gemm), (pack_awq_gemv, unpack_awq_gemv)]:
        back = unpack(pack(qw), 64)
        assert torch.equal(back.q, qw.q) and torch.equal(back.zeros, qw.zeros)


def _signed(word: int) -> int:
    return word - 2**32 if word >= 2**31 else word


def test_gemm_nibble_order_bytes():
    # out = 8 columns, in = 2 rows: row 0 holds 0..7, row 1 holds 8..15 along out.
    q = torch.arange(16, dtype=torch.int32).reshape(2, 8).t().contiguous()  # (out=8, in=2)
    qw = QuantizedWeight(q, torch.ones(8, 1), torch.full((8, 1), 8, dtype=torch.int32), w_bit=4, group_size=2)
    packed = pack_awq_gemm(qw)
    # Nibble i of each word holds column [0, 2, 4, 6, 1, 3, 5, 7][i].
    assert packed["qweight"].tolist() == [[_signed(0x75316420)], [_signed(0xFDB9ECA8)]]
    assert packed["qweight"].numpy().tobytes() == bytes.fromhex("20643175" + "a8ecb9fd")  # little-endian words
    assert packed["qzeros"].tolist() == [[_signed(0x88888888)]]
    assert packed["scales"].shape == (1, 8)


def test_gemv_sequential_order_bytes():
    q = torch.arange(16, dtype=torch.int32).reshape(1, 16).repeat(8, 1)  # (out=8, in=16)
    qw = QuantizedWeight(q, torch.ones(8, 1), torch.full((8, 1), 3, dtype=torch.int32), w_bit=4, group_size=16)
    with pytest.raises(ValueError, match="group sizes 32, 64"):
        pack_awq_gemv(qw)  # AutoAWQ's GEMV has no zeros width for g=16
    q = torch.arange(32, dtype=torch.int32).remainder(16).reshape(1, 32).repeat(8, 1)  # (out=8, in=32)
    qw = QuantizedWeight(q, torch.ones(8, 1), torch.full((8, 1), 3, dtype=torch.int32), w_bit=4, group_size=32)
    packed = pack_awq_gemv(qw)
    assert packed["qweight"][0].tolist() == [0x76543210, _signed(0xFEDCBA98)] * 2
    assert packed["qzeros"].shape == (8, 4)  # 1 group -> 1 word -> multiple of 4 for g=32
    assert packed["qzeros"][0].tolist() == [3, 0, 0, 0]  # zero-padded past the real groups


@pytest.mark.parametrize(
    "in_features,group_size,width",
    [
        (4096, 128, 4), (4096, 64, 8), (4096, 32, 16), (11008, 128, 11),
        (14336, 128, 14), (576, 64, 2), (64, 32, 4), (576, -1, 1),
    ],  # fmt: skip
)
def test_zeros_width_matches_autoawq(in_features, group_size, width):
    # Values worked out by hand from AutoAWQ's calculate_zeros_width.
    assert calculate_zeros_width(in_features, group_size) == width


def test_gemv_padding_is_zero():
    qw = random_qw(576, 16, 64)
    packed = pack_awq_gemv(qw)  # 9 groups padded to 16
    assert packed["scales"].shape == (16, 16)
    assert torch.all(packed["scales"][:, 9:] == 0)
    assert torch.all(packed["qzeros"][:, 1] >> 4 == 0)  # groups 9..15 live in word 1 above its first nibble


def test_gemm_agrees_with_kernel_reference():
    qw = random_qw(256, 64, 64)
    packed = pack_awq_gemm(qw)
    dense = dequantize_awq_gemm(packed["qweight"], packed["qzeros"], packed["scales"], 64)  # (in, out) fp16
    expected = QuantizedWeight(qw.q, qw.scales.half().float(), qw.zeros, 4, 64).dequantize().t().half()
    assert torch.equal(dense, expected)


def test_only_4_bit():
    qw = quantize(torch.randn(16, 64), 3, 32)
    with pytest.raises(AssertionError, match="4-bit"):
        pack_awq_gemm(qw)
    with pytest.raises(AssertionError, match="4-bit"):
        pack_awq_gemv(qw)


def test_version_parse():
    class OtherVersion(str, Enum):
        GEMV = "gemv"

    assert Version.parse("GEMM") is Version.GEMM
    assert Version.parse(OtherVersion.GEMV) is Version.GEMV
    with pytest.raises(ValueError, match="exllama"):
        Version.parse("exllama")
