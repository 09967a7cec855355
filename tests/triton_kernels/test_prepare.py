"""The load-time repack: lossless, and equal to the AutoAWQ contract's dequantisation."""
import pytest
import torch

from triton_kernels.awq_layout import dequantize_awq_gemm
from triton_kernels.prepare import PACK_K, pack_k_interleaved, prepare, unpack_k_interleaved, dequantize_prepared
from triton_kernels.testing import random_awq_layer


def test_k_interleaved_roundtrip_and_slab_order():
    q = torch.randint(0, 16, (2 * PACK_K, 24))
    words = pack_k_interleaved(q)
    assert words.shape == (2, 24, 16) and words.dtype == torch.int32
    assert torch.equal(unpack_k_interleaved(words), q)
    # Nibble i of word j of column n in block b is K row 128 b + 16 i + j.
    b, i, j, n = 1, 5, 3, 7
    assert (int(words[b, n, j]) >> (4 * i)) & 0xF == int(q[b * PACK_K + 16 * i + j, n])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k,n,group", [(256, 16, 128), (96, 8, 32), (160, 24, -1), (384, 8, 64)])
def test_prepared_dequantises_like_awq_layout(k, n, group, dtype):
    layer = random_awq_layer(k, n, group, dtype, seed=k + n)
    w = prepare(layer.qweight, layer.qzeros, layer.scales, group)
    assert w.in_features == k and w.out_features == n and w.padded_in_features % PACK_K == 0
    expected = dequantize_awq_gemm(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
    assert torch.equal(dequantize_prepared(w), expected)


def test_prepare_rejects_bad_shapes():
    layer = random_awq_layer(128, 16, 32, torch.float16)
    with pytest.raises(AssertionError, match="scales shape"):
        prepare(layer.qweight, layer.qzeros, layer.scales[:, :8], 32)
    with pytest.raises(AssertionError, match="multiple of group_size"):
        prepare(layer.qweight, layer.qzeros, layer.scales, 96)
