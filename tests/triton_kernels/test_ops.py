"""The public custom op: leading dims, bias, the CPU reference path, torch.compile, GPU kernels."""
import pytest
import torch

from triton_kernels import KernelChoice, prepare, w4a16_linear
from triton_kernels.testing import RTOL, random_awq_layer, reference_matmul, relative_error


def _layer_and_x(lead, k, n, group, dtype, device, seed=0):
    layer = random_awq_layer(k, n, group, dtype, device=device, seed=seed)
    w = prepare(layer.qweight, layer.qzeros, layer.scales, group)
    x = torch.randn((*lead, k), generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)
    return layer, w, x


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_reference_path_with_leading_dims_and_bias(dtype):
    layer, w, x = _layer_and_x((2, 3), 256, 32, 64, dtype, "cpu")
    bias = torch.randn(32).to(dtype)
    y = w4a16_linear(x, w, bias)
    assert y.shape == (2, 3, 32) and y.dtype == dtype
    assert relative_error(y.reshape(6, 32), reference_matmul(x.reshape(6, 256), layer, bias)) < RTOL


@pytest.mark.parametrize("kernel", [KernelChoice.GEMV, KernelChoice.GEMM, KernelChoice.GEMM_SWAPPED])
def test_forced_triton_kernels_through_the_op(kernel):
    device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: Triton's interpreter
    layer, w, x = _layer_and_x((1, 2), 256, 32, 128, torch.float16, device, seed=3)
    y = w4a16_linear(x, w, kernel=kernel)
    assert y.shape == (1, 2, 32)
    assert relative_error(y.reshape(2, 32), reference_matmul(x.reshape(2, 256), layer)) < RTOL


def test_opcheck_and_compile_without_graph_breaks():
    layer, w, x = _layer_and_x((4,), 128, 16, 32, torch.float16, "cpu", seed=5)
    torch.library.opcheck(
        torch.ops.awqflow.w4a16_linear.default,
        (x, w.qweight, w.zero_scales, None, w.group_size, w.in_features, KernelChoice.TORCH.value),
    )
    compiled = torch.compile(lambda t: w4a16_linear(t, w) * 2, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), w4a16_linear(x, w) * 2)


def test_rejects_mismatched_input():
    _, w, x = _layer_and_x((2,), 128, 16, 32, torch.float16, "cpu")
    with pytest.raises(AssertionError, match="expects 128"):
        w4a16_linear(x[:, :64], w)
    with pytest.raises(AssertionError, match="dtype"):
        w4a16_linear(x.float(), w)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("m", [1, 5, 64, 300])
def test_gpu_dispatch_and_cuda_graph(m):
    layer, w, x = _layer_and_x((m,), 1024, 512, 128, torch.float16, "cuda", seed=m)
    ref = reference_matmul(x, layer)
    assert relative_error(w4a16_linear(x, w), ref) < RTOL
    graph = torch.cuda.CUDAGraph()
    w4a16_linear(x, w)  # warm-up compiles outside the capture
    with torch.cuda.graph(graph):
        y = w4a16_linear(x, w)
    x.copy_(torch.randn_like(x))
    graph.replay()
    assert relative_error(y, reference_matmul(x, layer)) < RTOL
