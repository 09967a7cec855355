"""The GEMV's packed-fp16 products (`triton_kernels/half2.py`).

The inline PTX runs only on a GPU (`-m gpu`); on the CPU these tests check the arithmetic the PTX
relies on (in numpy fp16) and that configs asking for it fall back to the float32 path where it
cannot run.
"""
import dataclasses

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from triton_kernels import half2
from triton_kernels import gemm_swapped as swapped
from triton_kernels.configs import GemmConfig, GemvConfig
from triton_kernels.gemv import gemv, use_half2
from triton_kernels.prepare import prepare
from triton_kernels.testing import RTOL, random_awq_layer, reference_matmul, relative_error

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _zero_pairs_kernel(z_ptr, out_ptr):
    z = tl.load(z_ptr + tl.arange(0, 16))
    z64, z4 = half2.zero_pairs(z)
    tl.store(out_ptr + tl.arange(0, 16), z64)
    tl.store(out_ptr + 16 + tl.arange(0, 16), z4)


def _fp16_pair(bits: int) -> tuple[np.float16, np.float16]:
    halves = np.array([bits & 0xFFFF, (bits >> 16) & 0xFFFF], dtype=np.uint16).view(np.float16)
    return halves[0], halves[1]


def test_zero_pairs_are_the_negated_offsets():
    """Both fp16 lanes of `zero_pairs(z)` hold -(64 + z/16) and -(4 + z/16) exactly, for every z."""
    z = torch.arange(16, dtype=torch.int32, device=DEVICE)
    out = torch.empty(32, dtype=torch.int32, device=DEVICE)
    _zero_pairs_kernel[(1,)](z, out)
    bits = out.cpu().numpy().astype(np.int64) & 0xFFFFFFFF
    for zi in range(16):
        assert _fp16_pair(int(bits[zi])) == (np.float16(-(64 + zi / 16)),) * 2
        assert _fp16_pair(int(bits[16 + zi])) == (np.float16(-(4 + zi / 16)),) * 2


def test_dequant_arithmetic_is_exact():
    """What `dequant_pairs` computes, in numpy fp16 with one rounding per FMA (done in float64, exact for
    these magnitudes): for every nibble q and zero z, both nibble positions give (q - z) / 16 exactly."""
    q = np.arange(16)[:, None]
    z = np.arange(16)[None, :]
    low = np.float64(np.float16(1024 + q))  # LOP3 of the nibble at bits 0..3 into 0x6400
    high = np.float64(np.float16(1024 + 16 * q))  # the nibble at bits 4..7
    z64 = np.float64(np.float16(-(64 + z / 16)))
    z4 = np.float64(np.float16(-(4 + z / 16)))
    for value in (low * (1 / 16) + z64, high * (1 / 256) + z4):
        rounded = value.astype(np.float16)  # the FMA's single rounding
        np.testing.assert_array_equal(rounded.astype(np.float64), (q - z) / 16)


def _layer(m, k, n, group, seed, scale=1.0):
    layer = random_awq_layer(k, n, group, torch.float16, device=DEVICE, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = (torch.randn((m, k), generator=gen) * scale).half().to(DEVICE)
    return layer, x, prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)


def test_use_half2_only_where_it_can_run():
    layer, x, w = _layer(1, 256, 64, 128, seed=0)
    on = GemvConfig(half2=True)
    assert not use_half2(GemvConfig(half2=False), w, x)
    assert use_half2(on, w, x) == x.is_cuda  # the interpreter cannot run inline PTX
    _, x64, w64 = _layer(1, 256, 64, 64, seed=0)
    assert not use_half2(on, w64, x64), "groups of 64 rows split a 128-row block"
    bf = random_awq_layer(256, 64, 128, torch.bfloat16, device=DEVICE, seed=0)
    wbf = prepare(bf.qweight, bf.qzeros, bf.scales, bf.group_size)
    assert not use_half2(on, wbf, x.bfloat16())


def test_half2_config_falls_back_where_it_cannot_run():
    """A config asking for packed fp16 still gives the right product where the float32 path must run instead."""
    for group, dtype in ((64, torch.float16), (128, torch.bfloat16)):
        layer = random_awq_layer(256, 64, group, dtype, device=DEVICE, seed=3)
        w = prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
        x = torch.randn((2, 256), generator=torch.Generator().manual_seed(4)).to(dtype).to(DEVICE)
        y = gemv(x, w, None, GemvConfig(block_n=32, split_k=2, num_warps=4, num_stages=1, max_m=2, half2=True))
        assert relative_error(y, reference_matmul(x, layer)) < RTOL


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="inline PTX needs a CUDA GPU")
@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("k,n,group", [(256, 64, 128), (640, 40, 128), (384, 96, -1), (1024, 128, 256)])
@pytest.mark.parametrize("block_n,subtiles,split_k,step,prefetch,loop_stages",
                         [(32, 1, 1, 1, False, 0), (64, 2, 2, 2, False, 0), (32, 1, 3, 4, False, 0),
                          (32, 1, 2, 2, True, 0), (64, 1, 1, 1, True, 2), (128, 2, 4, 1, False, 0)])
def test_half2_gemv(m, k, n, group, block_n, subtiles, split_k, step, prefetch, loop_stages):
    """Against the float64 reference over ragged N (40), ragged splits and steps (640 rows: 5 blocks), M up to
    the register tile, both subtiles, the prefetch and the pipeliner; and as close as the float32 path."""
    layer, x, w = _layer(m, k, n, group, seed=m * 7 + k + n)
    kw = dict(block_n=block_n, subtiles=subtiles, split_k=split_k, num_warps=4, num_stages=2, max_m=8,
              blocks_per_step=step, prefetch=prefetch, loop_stages=loop_stages)
    assert use_half2(GemvConfig(**kw, half2=True), w, x)
    ref = reference_matmul(x, layer)
    y = gemv(x, w, None, GemvConfig(**kw, half2=True))
    err = relative_error(y, ref)
    assert err < RTOL, f"relative error {err:.2e}"
    err32 = relative_error(gemv(x, w, None, GemvConfig(**kw)), ref)
    assert err < max(4 * err32, 2e-3), f"packed fp16 error {err:.2e} against float32 path {err32:.2e}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="inline PTX needs a CUDA GPU")
@pytest.mark.parametrize("k,n", [(640, 40), (4096, 256)])
@pytest.mark.parametrize("block_n,subtiles,warps,slices,split_k,prefetch,max_registers",
                         [(32, 1, 8, 2, 1, True, 0), (32, 2, 8, 4, 2, False, 0), (64, 2, 16, 4, 1, True, 0),
                          (16, 1, 8, 4, 3, True, 64), (128, 1, 8, 1, 4, True, 56)])
def test_half2_gemv_k_slices(k, n, block_n, subtiles, warps, slices, split_k, prefetch, max_registers):
    """K slices inside a program, and a register cap, on the GPU at M=1: against the float64 reference
    and as close as the float32 path (5 blocks leave later slices past the split's end)."""
    layer, x, w = _layer(1, k, n, 128, seed=k + n + slices)
    kw = dict(block_n=block_n, subtiles=subtiles, split_k=split_k, num_warps=warps, num_stages=2, max_m=1,
              prefetch=prefetch, k_slices=slices, max_registers=max_registers)
    ref = reference_matmul(x, layer)
    err = relative_error(gemv(x, w, None, GemvConfig(**kw, half2=True)), ref)
    err32 = relative_error(gemv(x, w, None, GemvConfig(**kw)), ref)
    assert err < RTOL and err32 < RTOL, f"relative errors {err:.2e} (packed fp16), {err32:.2e} (float32)"
    assert err < max(4 * err32, 2e-3), f"packed fp16 error {err:.2e} against float32 path {err32:.2e}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="inline PTX needs a CUDA GPU")
def test_half2_gemv_large_activations():
    """Activations of +-12000 stay finite and accurate: without the 1/16 weight scaling a single fp16 product
    with q - z = 15 would already overflow (15 * 12000 > 65504)."""
    layer, x, w = _layer(1, 512, 256, 128, seed=11, scale=100.0)
    x[0, ::37] = 12000.0  # 28 of the 512 rows, in every block
    x[0, 1::37] = -12000.0
    cfg = GemvConfig(block_n=64, split_k=2, max_m=1, blocks_per_step=2, half2=True)
    assert use_half2(cfg, w, x)
    y = gemv(x, w, None, cfg)
    ref = reference_matmul(x, layer)
    assert ref.abs().max() < 30000, "the test's output itself must fit in fp16"
    assert torch.isfinite(y).all()
    assert relative_error(y, ref) < RTOL


def test_gemm_swapped_half2_only_where_it_can_run():
    _, x, w = _layer(16, 256, 64, 128, seed=0)
    assert swapped.use_half2(w, x) == x.is_cuda  # the interpreter cannot run inline PTX
    _, x64, w64 = _layer(16, 256, 64, 64, seed=0)
    assert not swapped.use_half2(w64, x64), "groups of 64 rows split a 128-row block"
    bf = random_awq_layer(256, 64, 128, torch.bfloat16, device=DEVICE, seed=0)
    assert not swapped.use_half2(prepare(bf.qweight, bf.qzeros, bf.scales, bf.group_size), x.bfloat16())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="inline PTX needs a CUDA GPU")
@pytest.mark.parametrize("m", [5, 16, 40, 100])
@pytest.mark.parametrize("k,n,group", [(256, 64, 128), (640, 40, 128), (384, 192, -1), (1024, 128, 256)])
@pytest.mark.parametrize("scale_operand,split_dot", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("block_m,block_n,split_k,warps,stages",
                         [(16, 64, 1, 4, 3), (32, 64, 2, 4, 4), (64, 128, 3, 8, 3), (128, 128, 1, 8, 3),
                          (64, 256, 1, 8, 3)])
def test_half2_gemm_swapped(m, k, n, group, block_m, block_n, split_k, warps, stages, scale_operand, split_dot):
    """The fp16-pair slabs against the float64 reference over ragged M and N (40), ragged splits (640 rows:
    5 blocks over 3 splits), one group over all of K (-1) and groups of two blocks; as close as the float32
    path. With the scale inside the operand (`scaled_slab_pairs`) too, and the block in two halves
    (`scaled_half_pairs`, split_dot)."""
    layer, x, w = _layer(m, k, n, group, seed=m * 5 + k + n)
    assert swapped.use_half2(w, x)
    config = GemmConfig(block_m=block_m, block_n=block_n, split_k=split_k, num_warps=warps, num_stages=stages,
                        scale_operand=scale_operand, split_dot=split_dot)
    ref = reference_matmul(x, layer)
    y = swapped.gemm_swapped(x, w, None, config)
    err = relative_error(y, ref)
    assert err < RTOL, f"relative error {err:.2e}"
    err32 = relative_error(swapped.gemm_swapped(x, w, None, config, half2=False), ref)
    assert err < max(2 * err32, 2e-3), f"fp16-pair error {err:.2e} against float32 path {err32:.2e}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="inline PTX needs a CUDA GPU")
@pytest.mark.parametrize("block_m,block_n,warps", [(128, 128, 8), (64, 64, 4)])
def test_half2_split_dot_is_the_same_product(block_m, block_n, warps):
    """The block in two halves issues the same depth-16 MMAs on the same fp16 weights in the same order as the
    one depth-128 product: the outputs agree bit for bit (a half dequantised with the wrong nibbles would not)."""
    layer, x, w = _layer(100, 1024, 192, 128, seed=11)
    whole = GemmConfig(block_m=block_m, block_n=block_n, split_k=1, num_warps=warps, num_stages=3, scale_operand=True)
    halves = dataclasses.replace(whole, split_dot=True)
    torch.testing.assert_close(swapped.gemm_swapped(x, w, None, halves), swapped.gemm_swapped(x, w, None, whole),
                               rtol=0, atol=0)
