"""WQLinear: the packed layer computes F.linear with the fake-quantized weight."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from awq_core.packing import Version
from awq_core.qlinear import WQLinear
from awq_core.quantizer import QuantizedWeight, fake_quantize, quantize


def fp16_scales(qw: QuantizedWeight) -> QuantizedWeight:
    """What the checkpoint holds: the same integers with scales rounded to fp16."""
    return QuantizedWeight(qw.q, qw.scales.half().float(), qw.zeros, qw.w_bit, qw.group_size)


SHAPES = [(64, 32, 32), (576, 64, 64), (256, 48, 128), (128, 16, -1)]  # (in, out, group_size)


@pytest.mark.parametrize("version", list(Version))
@pytest.mark.parametrize("in_features,out_features,group_size", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_forward_equals_linear_with_fake_quantized_weight(version, in_features, out_features, group_size, bias):
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=bias)
    qw = quantize(linear.weight, 4, group_size)
    layer = WQLinear.from_linear(linear, qw, version)
    x = torch.randn(2, 5, in_features)  # (batch, seq, in)

    w_ref = fp16_scales(qw).dequantize()  # (out, in) float32
    b_ref = None if linear.bias is None else linear.bias.detach().half().float()
    torch.testing.assert_close(layer(x), F.linear(x, w_ref, b_ref), rtol=0, atol=0)
    torch.testing.assert_close(layer.dequantized_weight(torch.float32), w_ref, rtol=0, atol=0)

    # And, up to the fp16 rounding of the scales, the quantizer's own fake quantization.
    w_fake = fake_quantize(linear.weight.detach(), 4, group_size)
    torch.testing.assert_close(layer(x), F.linear(x, w_fake, b_ref), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_forward_keeps_input_dtype(dtype):
    linear = nn.Linear(64, 32, bias=True)
    layer = WQLinear.from_linear(linear, quantize(linear.weight, 4, 64), "gemm")
    x = torch.randn(3, 64).to(dtype)
    y = layer(x)
    assert y.dtype == dtype and y.shape == (3, 32)
    expected = F.linear(x, layer.dequantized_weight(dtype), layer.bias.to(dtype))
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("version", list(Version))
def test_empty_has_the_from_linear_buffers(version):
    linear = nn.Linear(576, 64, bias=True)
    full = WQLinear.from_linear(linear, quantize(linear.weight, 4, 64), version)
    empty = WQLinear.empty(576, 64, True, 4, 64, version, torch.float16)
    assert list(empty.state_dict()) == ["qweight", "qzeros", "scales", "bias"]
    for name, tensor in empty.state_dict().items():
        assert tensor.is_meta
        assert (tensor.shape, tensor.dtype) == (full.state_dict()[name].shape, full.state_dict()[name].dtype), name
    assert "version=" + Version.parse(version).value in repr(empty)


def test_no_bias_means_no_bias_tensor():
    layer = WQLinear.empty(64, 32, False, 4, 32, "gemv", device="cpu")
    assert layer.bias is None and "bias" not in layer.state_dict()


def test_group_size_must_divide_in_features():
    with pytest.raises(ValueError, match=r"Linear\(in_features=96, out_features=64\)"):
        WQLinear.empty(96, 64, False, 4, 64, "gemm")
    with pytest.raises(ValueError, match="out_features=60"):
        WQLinear.empty(64, 60, False, 4, 64, "gemm")
    with pytest.raises(AssertionError, match="4-bit"):
        WQLinear.empty(64, 64, False, 8, 64, "gemm")


def test_from_linear_checks_shapes():
    linear = nn.Linear(64, 32)
    with pytest.raises(AssertionError, match="does not match"):
        WQLinear.from_linear(linear, quantize(torch.randn(32, 128), 4, 64), "gemm")


# ---- the Triton path (Triton's CPU interpreter here; tests/conftest.py sets TRITON_INTERPRET=1) -----


from awq_core.qlinear import KernelMode, set_kernel  # noqa: E402

needs_interpreter = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU interpreter test; the GPU runs benchmarks/")


def _tiny_layer(version, bias=True, in_features=256, out_features=32, group_size=64, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias)
    return WQLinear.from_linear(linear, quantize(linear.weight, 4, group_size), version)


@needs_interpreter
@pytest.mark.parametrize("version", list(Version))
@pytest.mark.parametrize("kernel", ["gemv", "gemm"])
@pytest.mark.parametrize("rows", [1, 11])  # 11 > GEMV_MAX_ROWS: the forced GEMV goes in chunks
def test_forced_triton_kernel_matches_torch_path(version, kernel, rows):
    layer = _tiny_layer(version)
    x = torch.randn(1, rows, 256).half()  # (batch, seq, in)
    layer.set_kernel("torch")
    ref = layer(x)
    layer.set_kernel(kernel)
    y = layer(x)
    assert y.shape == ref.shape == (1, rows, 32) and y.dtype == torch.float16
    err = float((y.double() - ref.double()).norm() / ref.double().norm())
    assert err < 2e-3, f"{kernel} vs torch: relative error {err:.2e}"


@needs_interpreter
def test_prepared_weight_is_cached_and_rebuilt_when_a_buffer_changes():
    layer = _tiny_layer("gemm")
    first = layer.prepared_weight(torch.float16)
    assert layer.prepared_weight(torch.float16) is first
    assert layer.prepared_weight(torch.bfloat16) is not first  # another dtype: another repack
    other = _tiny_layer("gemm", seed=1)
    layer.load_state_dict(other.state_dict())  # in place: same storage, new contents
    rebuilt = layer.prepared_weight(torch.float16)
    assert rebuilt is not first
    assert torch.equal(rebuilt.qweight, other.prepared_weight(torch.float16).qweight)
    layer.to(torch.device("cpu"))  # _apply drops the cache
    assert layer._prepared is None


def test_auto_on_cpu_is_the_torch_reference_and_set_kernel_reaches_every_layer():
    model = nn.Sequential(_tiny_layer("gemm"), nn.ReLU(), _tiny_layer("gemv", in_features=32, group_size=32))
    x = torch.randn(3, 256)
    y_auto = model(x)
    assert set_kernel(model, "TORCH") == 2
    assert all(m.kernel is KernelMode.TORCH for m in model if isinstance(m, WQLinear))
    torch.testing.assert_close(model(x), y_auto, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown kernel"):
        set_kernel(model, "marlin")
