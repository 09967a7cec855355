"""Quantized layers under torch.compile: one graph per model once an eager call has repacked the weights,
the same outputs as eager, and a compiled decode step in `GraphedDecodeStep`.

The kernels run in Triton's CPU interpreter here (tests/conftest.py sets TRITON_INTERPRET=1), behind the
`awqflow::w4a16_linear` custom op. The "aot_eager" backend traces exactly what Inductor would receive
(Dynamo's graph, then the op's fake implementation) without compiling C++ for the CPU.
"""
import pytest
import torch
import torch._dynamo

from awq_core.decode import GraphedDecodeStep
from awq_core.fused_linear import fuse_linears
from awq_core.qlinear import set_kernel
from quantized_tiny import quantized_pair
from test_decode import greedy, prompt, route_decode_steps_on_cpu

needs_interpreter = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU interpreter test; the GPU runs benchmarks/")


def kernel_model(version: str, fused: bool, kernel: str = "gemv"):
    model, _ = quantized_pair("llama", version)
    model = model.half()
    if fused:
        fuse_linears(model)
    set_kernel(model, kernel)
    return model


@needs_interpreter
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("version", ["gemm", "gemv", "gptq"])
def test_quantized_model_traces_as_one_graph_after_an_eager_call(version, fused):
    model = kernel_model(version, fused)
    x = prompt(batch=1, length=5)
    with torch.no_grad():
        eager = model(x).logits  # builds every layer's repacked weight
        explanation = torch._dynamo.explain(model)(x)
        assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
        assert explanation.graph_count == 1
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)(x).logits
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


@needs_interpreter
@pytest.mark.parametrize("kernel", ["gemv", "gemm"])
def test_act_order_gptq_layer_compiles_with_its_column_order(kernel):
    from test_gptq_checkpoint import gptq_layer

    layer = gptq_layer(256, 32, 64, desc_act=True).half()
    layer.set_kernel(kernel)
    x = torch.randn(3, 256).half()
    with torch.no_grad():
        eager = layer(x)
        assert layer._prepared[2] is not None, "act-order layers gather x's columns"
        torch._dynamo.reset()
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


@needs_interpreter
def test_compiling_before_any_eager_call_still_gives_the_eager_result():
    """Without a repacked weight to read, tracing falls back to the eager path (with graph breaks)."""
    model = kernel_model("gemm", fused=True)
    reference = kernel_model("gemm", fused=True)
    x = prompt(batch=1, length=5)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, backend="aot_eager")(x).logits
        eager = reference(x).logits
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


@needs_interpreter
def test_a_rebuilt_repack_is_what_the_next_compiled_call_reads():
    """Editing a buffer and calling eagerly rebuilds the repack; Dynamo's guards then retrace on it."""
    model = kernel_model("gemm", fused=False)
    x = prompt(batch=1, length=5)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", dynamic=False)
    with torch.no_grad():
        model(x)
        before = compiled(x).logits
        layer = model.model.layers[0].self_attn.o_proj
        layer.scales.mul_(2.0)
        eager = model(x).logits  # rebuilds layer 0's repack
        after = compiled(x).logits
    assert not torch.equal(before, after), "the compiled model must see the edited scales"
    torch.testing.assert_close(after, eager, rtol=0, atol=0)


@pytest.mark.parametrize("version", ["gemm", "gptq"])
def test_compiled_decode_step_greedy_equals_the_eager_step(version):
    model, _ = quantized_pair("llama", version)
    fuse_linears(model)
    x = prompt()
    expected = greedy(model, x)
    step = route_decode_steps_on_cpu(model)
    model.fast_decode_step = step = GraphedDecodeStep(model, compile=True, compile_backend="aot_eager")
    model.get_compiled_call = lambda compile_config=None: step
    torch._dynamo.reset()
    assert torch.equal(greedy(model, x), expected)
    assert step.compiled and step.fallback_reason is None
    assert step.step.replays == 12 - 2


def test_a_failing_compile_falls_back_to_eager_and_says_why():
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("backend exploded")

    model, _ = quantized_pair("llama")
    x = prompt()
    expected = greedy(model, x)
    step = route_decode_steps_on_cpu(model)
    model.fast_decode_step = step = GraphedDecodeStep(model, compile=True, compile_backend=broken_backend)
    model.get_compiled_call = lambda compile_config=None: step
    torch._dynamo.reset()
    assert torch.equal(greedy(model, x), expected)
    assert not step.compiled
    assert "torch.compile failed" in step.fallback_reason and "backend exploded" in step.fallback_reason


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("label", ["fp16", "w4"])
def test_compiled_graphed_decode_on_cuda_matches_eager_decoding(label):
    """Inductor (not aot_eager) and CUDA-graph capture of the compiled step, on the GPU kernels."""
    from test_decode import load_benchmark

    bench = load_benchmark()
    model = bench.build_model("tiny", torch.device("cuda"))
    fuse_linears(model)
    if label == "w4":
        bench.quantize_in_place(model)
    torch._dynamo.reset()
    checks = bench.graph_checks(model, prompt=16, compile=True, steps=8)
    assert checks["graphed"] and checks["compiled"], f"the compiled step must be captured as a CUDA graph: {checks}"
    assert checks["logits_relative_difference"] < bench.LOGITS_RTOL, checks
