"""GPTQ layout: exact round trips for 2/3/4/8 bits, and the word layout other tools write."""
import numpy as np
import pytest
import torch

from awq_core.gptq_packing import pack_bits, pack_gptq, packed_shapes_gptq, unpack_bits, unpack_gptq
from awq_core.quantizer import QuantizedWeight


def reference_pack_rows(intweight: np.ndarray, bits: int) -> np.ndarray:
    """AutoGPTQ's packing loop over rows (the input dimension), written out word by word."""
    rows = intweight.shape[0] * bits // 32
    qweight = np.zeros((rows, intweight.shape[1]), dtype=np.uint32)
    iw = intweight.astype(np.uint32)
    i = row = 0
    while row < rows:
        if bits in (2, 4, 8):
            for j in range(i, i + 32 // bits):
                qweight[row] |= iw[j] << (bits * (j - i))
            i += 32 // bits
            row += 1
        else:  # 3 bits: 32 values in 3 words, values 10 and 21 straddle the word boundaries
            for j in range(i, i + 10):
                qweight[row] |= iw[j] << (3 * (j - i))
            i += 10
            qweight[row] |= iw[i] << 30
            row += 1
            qweight[row] |= (iw[i] >> 2) & 1
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= iw[j] << (3 * (j - i) + 1)
            i += 10
            qweight[row] |= iw[i] << 31
            row += 1
            qweight[row] |= (iw[i] >> 1) & 0x3
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= iw[j] << (3 * (j - i) + 2)
            i += 10
            row += 1
    return qweight.view(np.int32)


def random_weight(bits, out_features=64, in_features=128, group_size=32, act_order=False, seed=0) -> QuantizedWeight:
    gen = torch.Generator().manual_seed(seed)
    groups = in_features // group_size
    q = torch.randint(0, 2**bits, (out_features, in_features), generator=gen, dtype=torch.int32)
    zeros = torch.randint(1, 2**bits, (out_features, groups), generator=gen, dtype=torch.int32)
    scales = torch.rand(out_features, groups, generator=gen).add(0.01).half().float()
    g_idx = None
    if act_order:
        g_idx = (torch.randperm(in_features, generator=gen) // group_size).to(torch.int32)
    return QuantizedWeight(q, scales, zeros, bits, group_size, g_idx)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_bits_matches_the_reference_word_layout(bits):
    values = torch.randint(0, 2**bits, (96, 5), generator=torch.Generator().manual_seed(bits), dtype=torch.int32)
    packed = pack_bits(values, bits, dim=0)
    assert packed.dtype == torch.int32 and packed.shape == (96 * bits // 32, 5)
    np.testing.assert_array_equal(packed.numpy(), reference_pack_rows(values.numpy(), bits))
    assert torch.equal(unpack_bits(packed, bits, dim=0), values)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_round_trip_is_exact(bits, group_size, act_order):
    qw = random_weight(bits, 96, 256, group_size, act_order, seed=bits * group_size)
    tensors = pack_gptq(qw)
    expected = packed_shapes_gptq(256, 96, bits, group_size)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected
    assert tensors["scales"].dtype == torch.float16 and tensors["g_idx"].dtype == torch.int32
    back = unpack_gptq(tensors, bits, group_size)
    assert torch.equal(back.q, qw.q) and torch.equal(back.zeros, qw.zeros) and torch.equal(back.scales, qw.scales)
    assert (back.g_idx is None) == (not act_order)
    assert torch.equal(back.column_groups(), qw.column_groups())
    assert torch.equal(back.dequantize(), qw.dequantize())


def test_qzeros_store_zero_minus_one_and_g_idx_is_natural_without_act_order():
    qw = random_weight(4)
    tensors = pack_gptq(qw)
    stored = unpack_bits(tensors["qzeros"], 4, dim=1).t()  # (out, groups)
    assert torch.equal(stored, qw.zeros - 1)
    assert torch.equal(tensors["g_idx"], torch.arange(128, dtype=torch.int32) // 32)


def test_zero_point_of_zero_is_refused():
    qw = random_weight(4)
    qw.zeros[0, 0] = 0
    with pytest.raises(ValueError, match="zero - 1"):
        pack_gptq(qw)


def test_sizes_that_do_not_fill_words_are_refused():
    with pytest.raises(ValueError, match="whole 32-bit words"):
        packed_shapes_gptq(in_features=100, out_features=64, bits=3, group_size=-1)
