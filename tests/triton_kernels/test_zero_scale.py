"""A group's zero point and scale in one int32 word: lossless both ways, and the kernels' unpacking agrees.

Without CUDA the kernel test runs on Triton's CPU interpreter (see conftest.py).
"""
import pytest
import torch
import triton
import triton.language as tl

from triton_kernels.prepare import prepare
from triton_kernels.testing import random_awq_layer
from triton_kernels.zero_scale import load_zero_scale, pack_zero_scales, scale_dtype, unpack_zero_scales

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _zeros_and_scales(dtype, groups=3, n=40, seed=0):
    """Every 4-bit zero point, and scales of both signs, tiny (subnormal in fp16) and large."""
    gen = torch.Generator().manual_seed(seed)
    zeros = torch.arange(groups * n).remainder(16).to(torch.uint8).reshape(groups, n)
    scales = torch.randn((groups, n), generator=gen) * 10.0 ** torch.randint(-7, 4, (groups, n), generator=gen)
    return zeros, scales.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pack_then_unpack_gives_the_same_bits(dtype):
    zeros, scales = _zeros_and_scales(dtype)
    words = pack_zero_scales(zeros, scales)
    assert words.dtype == torch.int32 and words.shape == zeros.shape
    back_zeros, back_scales = unpack_zero_scales(words, dtype)
    assert torch.equal(back_zeros, zeros)
    assert torch.equal(back_scales.view(torch.int16), scales.view(torch.int16))  # bit for bit, signs and NaNs too


def test_pack_rejects_what_does_not_fit():
    zeros, scales = _zeros_and_scales(torch.float16)
    with pytest.raises(AssertionError, match="fp16 or bf16"):
        pack_zero_scales(zeros, scales.float())
    with pytest.raises(AssertionError, match="uint8"):
        pack_zero_scales(zeros.int(), scales)
    with pytest.raises(AssertionError, match="differ"):
        pack_zero_scales(zeros[:, :8], scales)


@triton.jit
def _unpack_kernel(zs_ptr, z_ptr, s_ptr, N, SCALE_DTYPE: tl.constexpr, BLOCK_N: tl.constexpr):
    group = tl.program_id(0)
    offs_n = tl.arange(0, BLOCK_N)
    mask = offs_n < N
    z, s = load_zero_scale(zs_ptr, group, offs_n, mask, N, SCALE_DTYPE)
    tl.store(z_ptr + group * N + offs_n, z, mask=mask)
    tl.store(s_ptr + group * N + offs_n, s, mask=mask)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernels_read_the_zero_point_and_the_scale_back(dtype):
    zeros, scales = _zeros_and_scales(dtype, seed=1)
    words = pack_zero_scales(zeros, scales).to(DEVICE)
    groups, n = words.shape
    z = torch.full((groups, n), -1, dtype=torch.int32, device=DEVICE)
    s = torch.full((groups, n), float("nan"), dtype=torch.float32, device=DEVICE)
    _unpack_kernel[(groups,)](words, z, s, n, SCALE_DTYPE=scale_dtype(dtype), BLOCK_N=triton.next_power_of_2(n))
    assert torch.equal(z.cpu(), zeros.int())
    assert torch.equal(s.cpu(), scales.float())  # fp16 and bf16 widen to float32 exactly


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_prepared_weight_holds_the_awq_zero_points_and_scales(dtype):
    """One int32 word per (group, column); the unpacked views are the checkpoint's zeros and scales, padded."""
    layer = random_awq_layer(160, 24, 32, dtype, seed=2)  # K=160: padded to 256 rows, 8 groups of 32
    w = prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
    assert w.zero_scales.dtype == torch.int32 and w.zero_scales.shape == (8, 24) and w.dtype == dtype
    shifts = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7]) * 4  # AutoAWQ's packing order of 8 columns in a word
    zeros = ((layer.qzeros.unsqueeze(-1) >> shifts) & 0xF).reshape(5, 24)  # (groups, N)
    assert torch.equal(w.zeros[:5].int(), zeros) and not w.zeros[5:].any()
    assert torch.equal(w.scales[:5], layer.scales) and not w.scales[5:].any()
