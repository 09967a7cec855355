"""GPTQ checkpoints: save/load gives the fake-quantized logits, foreign GPTQ files load, the 4-bit
layers run on the Triton kernels (act-order included), and bad configs fail clearly."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from awq_core.awq import quantize_model
from awq_core.checkpoint import GPTQ_LAYOUT, CheckpointError, load_quantized, replace_linears, save_quantized
from awq_core.config import GPTQConfig, QuantConfig
from awq_core.gptq_linear import GPTQLinear
from awq_core.quantizer import QuantizedWeight, dequantize_by_index
from test_gptq_packing import reference_pack_rows
from tiny_models import tiny_model

IDS = torch.randint(0, 128, (8, 64), generator=torch.Generator().manual_seed(0))


def quantized_tiny(kind="llama", bits=4, group_size=32, **gptq):
    model = tiny_model(kind)
    config = QuantConfig(method="gptq", w_bit=bits, group_size=group_size, gptq=GPTQConfig(**gptq))
    result = quantize_model(model, IDS, config, batch_size=4)
    return model, config, result


@pytest.mark.parametrize("bits,desc_act", [(2, False), (3, True), (4, False), (4, True), (8, False)])
def test_save_load_reproduces_the_fake_quantized_logits(tmp_path, bits, desc_act):
    model, config, result = quantized_tiny("qwen2", bits, desc_act=desc_act)  # qwen2: q/k/v biases too
    with torch.no_grad():
        expected = model(IDS[:2]).logits
    replace_linears(model, result.quantized, GPTQ_LAYOUT)
    save_quantized(model, tmp_path, config.hf_quantization_config(), dtype=None)
    loaded = load_quantized(tmp_path, dtype=torch.float32)
    assert sum(isinstance(m, GPTQLinear) for m in loaded.modules()) == 14
    with torch.no_grad():
        logits = loaded(IDS[:2]).logits
    # The biases are stored in fp16, as every GPTQ checkpoint does: the only difference allowed.
    torch.testing.assert_close(logits, expected, rtol=0, atol=2e-3)
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert {k: qc[k] for k in ("quant_method", "bits", "group_size", "desc_act", "sym", "checkpoint_format")} == {
        "quant_method": "gptq", "bits": bits, "group_size": 32, "desc_act": desc_act, "sym": False, "checkpoint_format": "gptq",
    }  # fmt: skip
    assert json.loads((tmp_path / "quantize_config.json").read_text())["bits"] == bits


def foreign_gptq_checkpoint(tmp_path, bits=4, group_size=32, act_order=True, old_style=False):
    """A GPTQ checkpoint built the way other tools write it (AutoGPTQ's packing loop), independently of
    our packing code; returns the float model with the same dequantized weights."""
    model = tiny_model("llama")
    for p in model.parameters():  # the float tensors are stored in fp16: make the reference fp16-exact
        p.data = p.data.half().float()
    gen = torch.Generator().manual_seed(7)
    tensors = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or name == "lm_head":
            continue
        out_f, in_f = module.out_features, module.in_features
        groups = in_f // group_size
        q = torch.randint(0, 2**bits, (out_f, in_f), generator=gen, dtype=torch.int32)
        zeros = torch.randint(1, 2**bits, (groups, out_f), generator=gen, dtype=torch.int32)
        scales = (torch.rand(groups, out_f, generator=gen) * 0.02 + 0.001).half()
        g_idx = torch.arange(in_f, dtype=torch.int32) // group_size
        if act_order:
            g_idx = g_idx[torch.randperm(in_f, generator=gen)]
        tensors[f"{name}.qweight"] = torch.from_numpy(reference_pack_rows(q.t().numpy(), bits))
        tensors[f"{name}.qzeros"] = torch.from_numpy(reference_pack_rows((zeros - 1).t().numpy(), bits)).t().contiguous()
        tensors[f"{name}.scales"] = scales
        tensors[f"{name}.g_idx"] = g_idx
        with torch.no_grad():
            module.weight.copy_(dequantize_by_index(q, scales.t().float(), zeros.t(), g_idx))
    for name, p in model.state_dict().items():
        if not any(name.startswith(k.rsplit(".", 1)[0] + ".") for k in tensors) and name != "lm_head.weight":
            tensors[name] = p.half()
    if not model.config.tie_word_embeddings:
        tensors["lm_head.weight"] = model.lm_head.weight.detach().half()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    config = model.config.to_dict()
    settings = {"bits": bits, "group_size": group_size, "desc_act": act_order, "sym": False, "damp_percent": 0.01}
    if old_style:  # older AutoGPTQ: settings only in quantize_config.json
        (tmp_path / "quantize_config.json").write_text(json.dumps(settings))
    else:
        config["quantization_config"] = {"quant_method": "gptq", **settings, "checkpoint_format": "gptq"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return model


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("old_style", [False, True])
def test_gptq_checkpoints_written_by_other_tools_load(tmp_path, bits, old_style):
    reference = foreign_gptq_checkpoint(tmp_path, bits, old_style=old_style)
    loaded = load_quantized(tmp_path, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS[:2]).logits, reference(IDS[:2]).logits, rtol=1e-4, atol=1e-4)


def test_other_gptq_formats_are_refused_with_the_fix(tmp_path):
    foreign_gptq_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["checkpoint_format"] = "gptq_v2"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="checkpoint_format='gptq_v2'.*convert"):
        load_quantized(tmp_path)
    config["quantization_config"].update(checkpoint_format="gptq", bits=5)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="bits=5"):
        load_quantized(tmp_path)


def test_saving_needs_matching_layers(tmp_path):
    model, config, result = quantized_tiny()
    replace_linears(model, result.quantized, "gemm")  # AWQ layers, GPTQ config
    with pytest.raises(CheckpointError, match="quant_method=gptq"):
        save_quantized(model, tmp_path, config.hf_quantization_config())


def test_awq_layout_refuses_other_widths_and_points_to_gptq():
    with pytest.raises(ValueError, match="method=gptq"):
        QuantConfig(w_bit=3).hf_quantization_config()
    assert QuantConfig(method="gptq", w_bit=3).hf_quantization_config()["bits"] == 3


# ---- the Triton path (Triton's CPU interpreter here; tests/conftest.py sets TRITON_INTERPRET=1) -----

needs_interpreter = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU interpreter test; the GPU runs benchmarks/")


def gptq_layer(in_features: int, out_features: int, group_size: int, desc_act: bool) -> GPTQLinear:
    """A 4-bit GPTQ layer quantized against correlated inputs (act-order then permutes for real)."""
    from awq_core.gptq import Hessian, gptq_quantize

    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features)
    h = Hessian(in_features)
    h.add(torch.randn(2 * in_features, in_features) @ torch.randn(in_features, in_features) / in_features**0.5)
    qw = gptq_quantize(linear.weight, h.value(), 4, group_size, True, GPTQConfig(desc_act=desc_act)).weight
    assert (qw.g_idx is not None) == desc_act
    return GPTQLinear.from_linear(linear, qw)


@needs_interpreter
@pytest.mark.parametrize("desc_act", [False, True])
@pytest.mark.parametrize("kernel", ["gemv", "gemm"])
def test_4bit_gptq_runs_on_the_triton_kernels(desc_act, kernel):
    layer = gptq_layer(256, 32, 64, desc_act)
    inputs = torch.randn(3, 256).half()
    layer.set_kernel("torch")
    reference = layer(inputs)
    layer.set_kernel(kernel)
    out = layer(inputs)
    error = float((out.double() - reference.double()).norm() / reference.double().norm())
    assert error < 2e-3, f"{kernel}: relative error {error:.2e} against the torch path"


def test_other_widths_take_the_torch_path():
    layer = GPTQLinear(256, 32, bias=False, w_bit=3, group_size=64)
    assert not layer._kernel_shape_ok()
    assert GPTQLinear(256, 32, bias=False, w_bit=4, group_size=64)._kernel_shape_ok()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("desc_act", [False, True])
@pytest.mark.parametrize("rows", [1, 4, 33, 300])  # GEMV, GEMM and the dequantize + cuBLAS path by dispatch
def test_4bit_gptq_on_cuda_matches_the_torch_path(desc_act, rows):
    layer = gptq_layer(1024, 512, 128, desc_act).cuda()
    inputs = torch.randn(rows, 1024, device="cuda", dtype=torch.float16)
    layer.set_kernel("torch")
    reference = layer(inputs)
    layer.set_kernel("auto")
    out = layer(inputs)
    assert layer._prepared is not None, "auto on CUDA must take the kernels"
    error = float((out.double() - reference.double()).norm() / reference.double().norm())
    assert error < 2e-3, f"rows={rows}: relative error {error:.2e} against the torch path"
