"""Split-K partial sums: summed in a fixed order by each tile's last program, counters left at zero.

Without CUDA these run on Triton's CPU interpreter (see conftest.py).
"""
from dataclasses import replace

import pytest
import torch

from triton_kernels.configs import GemmConfig, GemvConfig
from triton_kernels.gemm import gemm, k_splits, tiled_launch
from triton_kernels.gemm_swapped import gemm_swapped
from triton_kernels.gemv import gemv
from triton_kernels.prepare import prepare
from triton_kernels.splitk import MAX_TILES, arrival_counters, merge_unroll, split_buffers
from triton_kernels.testing import RTOL, random_awq_layer, reference_matmul, relative_error

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _layer(k, n, seed=0, dtype=torch.float16):
    layer = random_awq_layer(k, n, 128, dtype, device=DEVICE, seed=seed)
    return layer, prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)


# The swapped GEMM's 16x32 tile sums 4 partials at once, its 64x64 tile one at a time (`merge_unroll`)
SWAPPED_NARROW = GemmConfig(block_m=16, block_n=32, num_warps=4, num_stages=1)
SWAPPED_WIDE = GemmConfig(block_m=64, block_n=64, num_warps=4, num_stages=1)
RUNS = {
    "gemv": lambda x, w, split: gemv(x, w, None, GemvConfig(block_n=32, split_k=split, num_stages=1, max_m=4, subtiles=2)),
    "gemm": lambda x, w, split: gemm(x, w, None, GemmConfig(block_m=16, block_n=32, split_k=split, num_stages=1)),
    "swapped_narrow": lambda x, w, split: gemm_swapped(x, w, None, replace(SWAPPED_NARROW, split_k=split)),
    "swapped_wide": lambda x, w, split: gemm_swapped(x, w, None, replace(SWAPPED_WIDE, split_k=split)),
}


@pytest.mark.parametrize("n_blocks", [1, 2, 7, 8, 32, 86])
@pytest.mark.parametrize("asked", [1, 2, 3, 4, 6, 8, 100])
def test_k_splits_cover_every_block_and_leave_no_split_empty(n_blocks, asked):
    per_split, splits = k_splits(n_blocks, asked)
    assert 1 <= splits <= min(asked, n_blocks)
    assert (splits - 1) * per_split < n_blocks <= splits * per_split  # the last split holds 1..per_split blocks


def test_merge_width_follows_the_table():
    """4 partials at once where a thread holds at most 16 elements of one, else 1 (the H100 timings in splitk.py)."""
    assert merge_unroll(16 * 32, 32 * 4) == 4  # 4 elements a thread
    assert merge_unroll(32 * 64, 32 * 4) == 4  # 16: the 4-warp 32x64 tile
    assert merge_unroll(64 * 128, 32 * 8) == 1  # 32: the 8-warp 64x128 tile
    assert merge_unroll(64 * 64, 32 * 4) == 1
    x = torch.zeros((64, 896), dtype=torch.float16, device=DEVICE)
    _, w = _layer(896, 128)
    assert tiled_launch(x, w, SWAPPED_NARROW).merge_unroll == 4
    assert tiled_launch(x, w, SWAPPED_WIDE).merge_unroll == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kernel", ["gemv", "gemm", "swapped_narrow", "swapped_wide"])
@pytest.mark.parametrize("split", [4, 7])  # one round of 4-partial loads; two, the second partial
def test_split_k_matches_the_reference_and_leaves_the_counters_at_zero(kernel, dtype, split):
    layer, w = _layer(896, 128, dtype=dtype)  # 7 blocks of 128 rows
    x = torch.randn((3, 896), generator=torch.Generator().manual_seed(1)).to(dtype).to(DEVICE)
    counters = arrival_counters(x.device)
    for _ in range(2):  # the second launch relies on the first having reset its counters
        y = RUNS[kernel](x, w, split)
        assert y.dtype == dtype
        error = relative_error(y, reference_matmul(x, layer, None))
        assert error < RTOL, f"relative error {error:.2e}"
        assert int(counters.abs().sum()) == 0, "every tile's last program resets its counter"


@pytest.mark.parametrize("kernel", ["gemv", "gemm"])
def test_split_k_sum_is_closer_to_float32_than_one_rounded_add_per_split(kernel):
    """The partials stay float32 until one rounding: y equals the float32 reference rounded once, up to
    the order of the float32 additions (far below one fp16 ulp)."""
    layer, w = _layer(512, 64, seed=3)
    x = torch.randn((1, 512), generator=torch.Generator().manual_seed(4)).half().to(DEVICE)
    y = RUNS[kernel](x, w, 4).double().cpu()
    exact = reference_matmul(x, layer, None).double()
    ulps = (y - exact).abs() / torch.finfo(torch.float16).eps / exact.abs().clamp(min=1e-3)
    assert float(ulps.max()) <= 1.0, f"{float(ulps.max()):.2f} fp16 ulps from the exact product"


def test_too_many_tiles_is_refused_with_the_fix():
    x = torch.zeros((1, 8), dtype=torch.float16, device=DEVICE)
    with pytest.raises(AssertionError, match="larger tiles"):
        split_buffers(1, 8, x, 2, MAX_TILES + 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kernel", ["gemv", "gemm"])
def test_split_k_gives_the_same_bits_every_run_on_cuda(kernel):
    """Many programs per tile finish in a different order each run; the sum must not depend on it."""
    _, w = _layer(8192, 4096, seed=5)
    x = torch.randn((2, 8192), device="cuda", dtype=torch.float16)
    first = RUNS[kernel](x, w, 16)
    for _ in range(50):
        assert torch.equal(RUNS[kernel](x, w, 16), first)
