"""Split-K partial sums: summed in a fixed order by each tile's last program, counters left at zero.

Without CUDA these run on Triton's CPU interpreter (see conftest.py).
"""
import pytest
import torch

from triton_kernels.configs import GemmConfig, GemvConfig
from triton_kernels.gemm import gemm
from triton_kernels.gemv import gemv
from triton_kernels.prepare import prepare
from triton_kernels.splitk import MAX_TILES, arrival_counters, split_buffers
from triton_kernels.testing import RTOL, random_awq_layer, reference_matmul, relative_error

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _layer(k, n, seed=0, dtype=torch.float16):
    layer = random_awq_layer(k, n, 128, dtype, device=DEVICE, seed=seed)
    return layer, prepare(layer.qweight, layer.qzeros, layer.scales, layer.group_size)


RUNS = {
    "gemv": lambda x, w, split: gemv(x, w, None, GemvConfig(block_n=32, split_k=split, num_stages=1, max_m=4, subtiles=2)),
    "gemm": lambda x, w, split: gemm(x, w, None, GemmConfig(block_m=16, block_n=32, split_k=split, num_stages=1)),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kernel", ["gemv", "gemm"])
@pytest.mark.parametrize("split", [4, 7])  # one round of MERGE_UNROLL loads; two, the second partial
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
