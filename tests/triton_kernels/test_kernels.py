"""Every kernel against the float64 reference on small random shapes.

Without CUDA these run on Triton's CPU interpreter (see conftest.py), which is slow: shapes are
kept to a few 128-row blocks of K and a few tiles of N and M.
"""
import os

import pytest
import torch

from triton_kernels.configs import GemmConfig, GemvConfig
from triton_kernels.dequant import dequantize
from triton_kernels.gemm import gemm
from triton_kernels.gemm_swapped import gemm_swapped, waits_each_block
from triton_kernels.gemv import gemv, register_cap
from triton_kernels.prepare import dequantize_prepared, prepare
from triton_kernels.testing import RTOL, random_awq_layer, reference_matmul, relative_error

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (K, N, group): K=96 and K=160 are not multiples of the 128-row block; group -1 is one group over K.
SHAPES = [(256, 64, 128), (160, 48, 32), (192, 64, 64), (96, 40, -1)]


def _inputs(m, k, n, group, dtype, seed, with_bias=False):
    layer = random_awq_layer(k, n, group, dtype, device=DEVICE, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn((m, k), generator=gen).to(dtype).to(DEVICE)
    bias = torch.randn((n,), generator=gen).to(dtype).to(DEVICE) if with_bias else None
    return layer, x, bias


def _check(y, layer, x, bias, m, n):
    assert y.shape == (m, n)
    assert torch.isfinite(y).all(), "output has NaN/inf (unwritten or overflowed elements)"
    err = relative_error(y, reference_matmul(x, layer, bias))
    assert err < RTOL, f"relative error {err:.2e} >= {RTOL}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k,n,group", SHAPES)
@pytest.mark.parametrize("m,split_k", [(1, 1), (3, 2)])
@pytest.mark.parametrize("block_n,subtiles,prefetch,loop_stages,step",
                         [(32, 1, False, 0, 1), (64, 2, True, 0, 1), (32, 1, True, 0, 1), (32, 1, False, 3, 1),
                          (64, 2, True, 2, 1), (32, 1, True, 0, 2), (64, 2, False, 0, 3), (32, 1, True, 2, 4)])
def test_gemv(m, split_k, k, n, group, dtype, block_n, subtiles, prefetch, loop_stages, step):
    """N = 40 and 48 leave the last tile (and with two subtiles, its second half) partly or wholly outside N;
    K = 256 without split gives the prefetching loop a block to fetch ahead. Steps of 2 to 4 blocks overrun
    K's 1 or 2 blocks (and split 2's single block each), so a step's blocks past the split must add 0."""
    layer, x, bias = _inputs(m, k, n, group, dtype, seed=m + k + n, with_bias=(m == 3))
    w = prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
    cfg = GemvConfig(block_n=block_n, split_k=split_k, num_warps=4, num_stages=1, max_m=4, subtiles=subtiles,
                     prefetch=prefetch, loop_stages=loop_stages, blocks_per_step=step)
    y = gemv(x, w, bias, cfg)
    _check(y, layer, x, bias, m, n)


@pytest.mark.parametrize("k,group", [(512, 128), (640, 64)])
@pytest.mark.parametrize("step,prefetch,split_k", [(2, True, 1), (3, False, 2), (4, True, 2)])
def test_gemv_several_steps(k, group, step, prefetch, split_k):
    """Multi-block steps over several iterations: 4 or 5 blocks of K, with splits whose block count is and
    is not a whole number of steps (640 rows: 5 blocks, the last step of the last split is partly empty)."""
    m, n = 2, 64
    layer, x, bias = _inputs(m, k, n, group, torch.float16, seed=k + step)
    w = prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
    cfg = GemvConfig(block_n=32, split_k=split_k, num_warps=4, num_stages=1, max_m=2, prefetch=prefetch,
                     blocks_per_step=step)
    _check(gemv(x, w, bias, cfg), layer, x, bias, m, n)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gemv_reads_float32_activations(dtype):
    """float32 x (the kernel then converts nothing): the output keeps the weight's dtype and matches the
    reference for x rounded to that dtype as closely as the usual path does."""
    layer, x, bias = _inputs(2, 256, 64, 128, dtype, seed=5, with_bias=True)
    w = prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
    cfg = GemvConfig(block_n=32, split_k=2, num_warps=4, num_stages=1, max_m=2, blocks_per_step=2)
    y = gemv(x.float(), w, bias, cfg)
    assert y.dtype == dtype
    _check(y, layer, x, bias, 2, 64)
    with pytest.raises(AssertionError, match="expected"):
        gemv(x.double(), w, bias, cfg)


@pytest.mark.parametrize("k,group", [(640, 128), (384, 32), (96, -1)])
@pytest.mark.parametrize("slices,step,prefetch,split_k,subtiles", [(2, 1, False, 1, 1), (2, 1, True, 2, 2),
                                                                    (4, 1, True, 1, 1), (2, 2, False, 1, 1)])
def test_gemv_k_slices(k, group, slices, step, prefetch, split_k, subtiles):
    """K slices inside a program: 5 blocks over 2 or 4 slices leave the last iteration's later slices past
    the split (they must add 0), split 2 gives each split its own slices, and K = 96 is one partial block
    (every slice but the first reads nothing). N = 40 is ragged against the 32-column tiles."""
    m, n = 1, 40
    layer, x, bias = _inputs(m, k, n, group, torch.float16, seed=k + slices + step, with_bias=True)
    w = prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
    cfg = GemvConfig(block_n=32, split_k=split_k, num_warps=4, num_stages=1, max_m=1, subtiles=subtiles,
                     prefetch=prefetch, blocks_per_step=step, k_slices=slices)
    _check(gemv(x, w, bias, cfg), layer, x, bias, m, n)


def test_gemv_k_slices_must_be_a_power_of_two():
    layer, x, _ = _inputs(1, 256, 32, 128, torch.float16, seed=0)
    w = prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
    with pytest.raises(AssertionError, match="k_slices must be a power of two"):
        gemv(x, w, None, GemvConfig(block_n=32, split_k=1, max_m=1, k_slices=3))


def test_gemv_register_cap_is_a_launch_option():
    """max_registers reaches the launch as Triton's maxnreg option; 0 adds nothing."""
    assert register_cap(GemvConfig(max_registers=64)) == {"maxnreg": 64}
    assert register_cap(GemvConfig()) == {}


def test_gemv_step_must_be_positive():
    layer, x, _ = _inputs(1, 256, 32, 128, torch.float16, seed=0)
    w = prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
    with pytest.raises(AssertionError, match="blocks_per_step must be >= 1"):
        gemv(x, w, None, GemvConfig(block_n=32, split_k=1, max_m=1, blocks_per_step=0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k,n,group", SHAPES)
@pytest.mark.parametrize("m,block_m,split_k", [(1, 16, 1), (21, 16, 2), (33, 32, 1)])
def test_gemm(m, block_m, split_k, k, n, group, dtype):
    layer, x, bias = _inputs(m, k, n, group, dtype, seed=2 * m + k + n, with_bias=(m == 21))
    w = prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
    y = gemm(x, w, bias, GemmConfig(block_m=block_m, block_n=32, split_k=split_k, num_warps=4, num_stages=1))
    _check(y, layer, x, bias, m, n)


@pytest.mark.parametrize("scale_operand,split_dot", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k,n,group", SHAPES)
@pytest.mark.parametrize("m,block_m,block_n,split_k", [(1, 16, 32, 1), (21, 16, 16, 2), (40, 32, 32, 3)])
def test_gemm_swapped(m, block_m, block_n, split_k, k, n, group, dtype, scale_operand, split_dot):
    """The weight-as-first-operand GEMM: M not a multiple of the tile, N not a multiple of the tile
    (n=40, 48), K not a multiple of the block (96, 160), more splits than blocks (k=96, split_k=2, 3); the
    scale on the float32 product or inside the weight operand (groups of 32 and 64 then share one MMA),
    there each block in one product or in two halves (split_dot: K rows 0..63, then 64..127)."""
    layer, x, bias = _inputs(m, k, n, group, dtype, seed=3 * m + k + n, with_bias=(m == 21))
    w = prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
    config = GemmConfig(block_m=block_m, block_n=block_n, split_k=split_k, num_warps=4, num_stages=1,
                        scale_operand=scale_operand, split_dot=split_dot)
    y = gemm_swapped(x, w, bias, config)
    _check(y, layer, x, bias, m, n)


@pytest.mark.parametrize("split_dot", [False, True])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_gemm_swapped_scaled_operand_is_the_rounded_weight(group, split_dot):
    """With the scale inside the operand, each weight enters the MMA as (q - z) * s rounded once to fp16, the
    value the dequantise kernel writes: one-hot rows of x read the weight's rows out bit for bit (with the
    block in two halves too: a half multiplied with the other half's activations would read a wrong row)."""
    k, n = 256, 48
    layer, _, _ = _inputs(1, k, n, group, torch.float16, seed=group)
    w = prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
    rows = torch.randperm(k, generator=torch.Generator().manual_seed(group))[:40]
    x = torch.zeros((40, k), dtype=torch.float16)
    x[torch.arange(40), rows] = 1.0
    config = GemmConfig(block_m=16, block_n=16, split_k=1, num_warps=4, num_stages=1, scale_operand=True,
                        split_dot=split_dot)
    y = gemm_swapped(x.to(w.device), w, None, config)
    torch.testing.assert_close(y.cpu(), dequantize_prepared(w).cpu()[rows], rtol=0, atol=0)


def test_gemm_swapped_rejects_tiles_below_16():
    layer, x, _ = _inputs(4, 128, 32, 128, torch.float16, seed=0)
    w = prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
    with pytest.raises(AssertionError, match="at least 16"):
        gemm_swapped(x, w, None, GemmConfig(block_m=8, block_n=32))


def test_gemm_swapped_split_dot_needs_the_scale_in_the_operand():
    layer, x, _ = _inputs(4, 128, 32, 128, torch.float16, seed=0)
    w = prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
    with pytest.raises(AssertionError, match="split_dot needs the scale in the operand"):
        gemm_swapped(x, w, None, GemmConfig(block_m=16, block_n=32, split_dot=True))


def test_gemm_swapped_waits_each_block_where_a_warpgroup_holds_more_than_64_rows():
    """The one-dot scaled path waits for its MMAs at each block's end where ptxas would leave them in flight."""
    def waits(block_n: int, num_warps: int, scale_operand: bool = True, split_dot: bool = False) -> bool:
        return waits_each_block(GemmConfig(block_m=64, block_n=block_n, num_warps=num_warps,
                                           scale_operand=scale_operand, split_dot=split_dot))
    assert waits(256, 8) and waits(128, 4)  # 128 rows a warpgroup
    assert not waits(128, 8) and not waits(64, 4) and not waits(256, 16)  # 64 rows a warpgroup
    assert not waits(256, 8, scale_operand=False)  # the float32 product already waits for each block
    assert not waits(256, 8, split_dot=True)  # the split product ends each block with a full wait


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability(0)[0] != 9,
                    reason="the race needs wgmma (Hopper)")
def test_gemm_swapped_wide_scaled_tile_is_right_every_run():
    """Without the wait, the 64x256 tile on 8 warps gave whole columns wrong in 12 of 400 runs at M=300 on the H100
    (benchmarks/README.md, "a race on tiles of more than 64 rows"): 100 runs all right."""
    layer, _, _ = _inputs(300, 1024, 768, 128, torch.float16, seed=3)
    w = prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
    wf = dequantize_prepared(w).float()
    config = GemmConfig(block_m=64, block_n=256, split_k=1, num_warps=8, num_stages=3, scale_operand=True)
    for _ in range(100):
        x = torch.randn((300, 1024), device="cuda", dtype=torch.float16)
        ref = x.float() @ wf
        err = float((gemm_swapped(x, w, None, config).float() - ref).norm() / ref.norm())
        assert err < RTOL, f"relative error {err:.2e}: a block's MMAs overwritten before they finished"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k,n,group", SHAPES[:2])
def test_dequant_kernel_matches_reference_bit_for_bit(k, n, group, dtype):
    layer, _, _ = _inputs(1, k, n, group, dtype, seed=7)
    w = prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
    dense = dequantize(w, block_n=32)
    assert dense.shape == (k, n)
    ref = dequantize_prepared(w).cpu()
    if dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1":
        # The CPU interpreter truncates float32 -> bf16 instead of rounding to nearest: 1 ulp off.
        torch.testing.assert_close(dense.cpu().float(), ref.float(), rtol=2**-7, atol=0)
        assert not torch.equal(dense.cpu(), torch.zeros_like(dense.cpu()))
    else:
        assert torch.equal(dense.cpu(), ref)


def test_split_k_partial_sums_all_land():
    """A split-K GEMV whose splits each see a different part of x: losing one split changes y."""
    layer, x, _ = _inputs(1, 512, 32, 128, torch.float16, seed=11)
    w = prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
    y = gemv(x, w, None, GemvConfig(block_n=32, split_k=4, num_warps=4, num_stages=1, max_m=1))
    _check(y, layer, x, None, 1, 32)
    x_tail = x.clone()
    x_tail[:, :384] = 0  # only the last split's rows remain
    y_tail = gemv(x_tail, w, None, GemvConfig(block_n=32, split_k=4, num_warps=4, num_stages=1, max_m=1))
    _check(y_tail, layer, x_tail, None, 1, 32)


def _fusion_reference(x, layer, bias, fusion):
    """float64: RMSNorm, the product, silu(gate) * up, the residual, as separate steps (`fusion.py`'s order)."""
    x64 = x.double().cpu()
    if fusion.norm_weight is not None:
        x64 = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + fusion.eps) * fusion.norm_weight.double().cpu()
    y = reference_matmul(x64, layer, bias)
    if fusion.glu:
        gate, up = y.chunk(2, dim=-1)
        y = torch.nn.functional.silu(gate) * up
    return y + fusion.residual.double().cpu() if fusion.residual is not None else y


@pytest.mark.parametrize("norm,glu,residual", [(True, False, False), (False, True, False), (False, False, True),
                                               (True, True, True)])
@pytest.mark.parametrize("m,split_k,k,n,group,block_n,subtiles,with_bias,half2",
                         [(1, 1, 256, 64, 128, 32, 1, False, True), (3, 2, 160, 80, 32, 32, 2, True, False),
                          (1, 3, 384, 48, 128, 64, 1, True, True)])
@pytest.mark.parametrize("loads_first,rms_chunk", [(False, 128), (True, 512)])
def test_gemv_fusions(norm, glu, residual, m, split_k, k, n, group, block_n, subtiles, with_bias, half2, loads_first,
                      rms_chunk):
    """RMSNorm before, silu(gate) * up and a residual after the product, in the GEMV's epilogue, against the
    float64 steps one by one. N = 80 with glu is 40 outputs, ragged in 16-column halves; N = 48 with glu gives
    24 outputs in 32-column halves, so the gate half's last tile reaches into the up columns' range and must
    neither read nor write there; split-K sums before the epilogue. (half2: the packed-fp16 products on a GPU,
    where the norm's weight multiplies x in fp16 before the pairs are packed; the float32 path elsewhere.
    loads_first: the epilogue's 1 / rms and residual read before the block loop; chunks of 128 sum the squares
    of K = 160, 256 and 384 in 2 or 3 loads, one of them ragged.)"""
    from triton_kernels.fusion import LinearFusion

    dtype = torch.float16
    layer, x, bias = _inputs(m, k, n, group, dtype, seed=7 * m + n, with_bias=with_bias)
    gen = torch.Generator().manual_seed(k + n)
    n_out = n // 2 if glu else n
    fusion = LinearFusion(
        norm_weight=(torch.rand(k, generator=gen) + 0.5).to(dtype).to(DEVICE) if norm else None,
        eps=1e-5, glu=glu,
        residual=torch.randn((m, n_out), generator=gen).to(dtype).to(DEVICE) if residual else None,
    )
    x = x * 3.0  # an RMS far from 1, so a missing 1 / rms shows
    w = prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
    cfg = GemvConfig(block_n=block_n, split_k=split_k, num_warps=4, num_stages=1, max_m=4, subtiles=subtiles,
                     half2=half2, fusion_loads_first=loads_first, rms_chunk=rms_chunk)
    y = gemv(x, w, bias, cfg, fusion)
    assert y.shape == (m, n_out)
    assert torch.isfinite(y).all(), "output has NaN/inf (unwritten or overflowed elements)"
    ref = _fusion_reference(x, layer, bias, fusion)
    err = relative_error(y, ref)
    assert err < RTOL, f"relative error {err:.2e} >= {RTOL}"


@pytest.mark.parametrize("split_k,loads_first", [(1, False), (2, True)])
def test_gemv_norm_split_over_two_products(split_k, loads_first):
    """The producer adds the residual and also writes its output times the next norm's weight; the consumer reads
    that as x and multiplies its sums by 1 / rms of the producer's output: RMSNorm(h) @ B without x * w in its loop."""
    from triton_kernels.fusion import LinearFusion

    dtype, k, n = torch.float16, 256, 96
    a, x, _ = _inputs(1, k, k, 128, dtype, seed=11)
    b, _, _ = _inputs(1, k, n, 128, dtype, seed=12)
    gen = torch.Generator().manual_seed(13)
    residual = (3 * torch.randn((1, k), generator=gen)).to(dtype).to(DEVICE)
    weight = (torch.rand(k, generator=gen) + 0.5).to(dtype).to(DEVICE)
    cfg = GemvConfig(block_n=32, split_k=split_k, num_warps=4, num_stages=1, max_m=4, subtiles=2, half2=True,
                     fusion_loads_first=loads_first, rms_chunk=128)
    wa, wb = (prepare(l.qweight, l.qzeros, l.scales, l.group_size) for l in (a, b))
    h, scaled = gemv(x, wa, None, cfg, LinearFusion(residual=residual, scaled_output_weight=weight))
    h_ref = reference_matmul(x, a) + residual.double().cpu()
    assert relative_error(h, h_ref) < RTOL
    torch.testing.assert_close(scaled, h * weight, rtol=0, atol=0)  # the rounded output times the weight, in fp16
    y = gemv(scaled, wb, None, cfg, LinearFusion(rms_of=h, eps=1e-5, glu=True))
    ref = _fusion_reference(h, b, None, LinearFusion(norm_weight=weight, eps=1e-5, glu=True))
    assert y.shape == (1, n // 2)
    assert relative_error(y, ref) < RTOL
