"""Our AWQ checkpoints as vLLM's and transformers' AWQ loaders read them, and AutoAWQ-layout checkpoints
written by another tool as we read them.

The expectations below are written from those loaders' documented formats, not from our code:

- vLLM `AWQConfig.from_config` reads `w_bit` or `bits`, `q_group_size` or `group_size`, `zero_point`;
  only 4 bits. `AWQLinearMethod.create_weights` gives each quantized linear `qweight` int32
  (in, out / 8), `qzeros` int32 (in / group, out / 8) and `scales` in the activation dtype (fp16)
  (in / group, out); a layer's bias stays `bias`; layers matched (by substring) by
  `modules_to_not_convert` keep `weight`. vLLM's AWQ kernels read the GEMM layout only.
- vLLM `AWQMarlinConfig.is_awq_marlin_compatible` reads exactly `quant_method` ('awq'), `bits`,
  `group_size` and `zero_point`; Marlin takes uint4 with zero points at group sizes -1, 32, 64, 128.
- transformers `AwqConfig` reads bits, group_size, zero_point, modules_to_not_convert, and `version`
  as its format (gemm or gemv).
- AutoAWQ GEMM words hold 8 nibbles of consecutive output columns in the order [0, 2, 4, 6, 1, 3, 5, 7];
  readers unpack them with shifts 0, 4, ..., 28 and the reverse order [0, 4, 1, 5, 2, 6, 3, 7];
  the weight is (q - zero) * scale. AutoAWQ GEMV: qweight (out, in / 8) in plain order, qzeros
  (out, zeros_width), scales (out, zeros_width * 8), zeros_width from `calculate_zeros_width`.
"""
import json

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AwqConfig
from transformers.quantizers.quantizers_utils import should_convert_module

from awq_core.checkpoint import save_quantized
from awq_core.config import QuantConfig
from awqflow import AutoQuantForCausalLM
from quantized_tiny import GROUP, fake_quantized, quantize_all, quantized_pair
from tiny_models import tiny_model

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]
MARLIN_GROUP_SIZES = (-1, 32, 64, 128)


def read_checkpoint(directory):
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, json.loads((directory / "config.json").read_text())


def saved(tmp_path, kind, version="gemm"):
    model, _ = quantized_pair(kind, version)
    save_quantized(model, tmp_path, QuantConfig(group_size=GROUP, version=version).hf_quantization_config())
    return read_checkpoint(tmp_path)


def expected_tensors(kind: str, version: str) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Names, dtypes and shapes a loader allocates for this model, from the float model's modules."""
    model = tiny_model(kind)
    head = model.get_output_embeddings()
    expected = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module is not head:
            n_in, n_out = module.in_features, module.out_features
            if version == "gemm":
                expected[f"{name}.qweight"] = (torch.int32, (n_in, n_out // 8))
                expected[f"{name}.qzeros"] = (torch.int32, (n_in // GROUP, n_out // 8))
                expected[f"{name}.scales"] = (torch.float16, (n_in // GROUP, n_out))
            else:
                width = autoawq_zeros_width(n_in, GROUP)
                expected[f"{name}.qweight"] = (torch.int32, (n_out, n_in // 8))
                expected[f"{name}.qzeros"] = (torch.int32, (n_out, width))
                expected[f"{name}.scales"] = (torch.float16, (n_out, width * 8))
            if module.bias is not None:
                expected[f"{name}.bias"] = (torch.float16, (n_out,))
    tied = model.config.tie_word_embeddings
    for name, p in model.named_parameters():  # embeddings, norms, an untied head: fp16 under their own names
        owner = name.rpartition(".")[0]
        if not isinstance(model.get_submodule(owner), nn.Linear) or model.get_submodule(owner) is head:
            if not (tied and model.get_submodule(owner) is head):
                expected[name] = (torch.float16, tuple(p.shape))
    return expected


def autoawq_zeros_width(in_features: int, group_size: int) -> int:
    """AutoAWQ's calculate_zeros_width: groups in whole int32 words, rounded up to a size multiple."""
    multiplier = 1 if group_size >= 128 else {64: 2, 32: 4}[group_size]
    base = -(-(in_features // group_size) // 8)
    return -(-base // multiplier) * multiplier


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3_text"])
@pytest.mark.parametrize("version", ["gemm", "gemv"])
def test_tensor_names_dtypes_and_shapes(tmp_path, kind, version):
    tensors, _ = saved(tmp_path, kind, version)
    expected = expected_tensors(kind, version)
    assert set(tensors) == set(expected), (set(tensors) ^ set(expected))
    for name, (dtype, shape) in expected.items():
        assert (tensors[name].dtype, tuple(tensors[name].shape)) == (dtype, shape), name


def vllm_awq_config(raw: dict) -> dict:
    """What vLLM's AWQConfig.from_config takes from quantization_config (either spelling of each key)."""
    def first(*keys):
        for key in keys:
            if key in raw:
                return raw[key]
        raise KeyError(f"none of {keys} in quantization_config")

    return {"bits": first("w_bit", "bits"), "group_size": first("q_group_size", "group_size"), "zero_point": first("zero_point")}


def marlin_compatible(raw: dict) -> bool:
    """vLLM's AWQMarlinConfig.is_awq_marlin_compatible, on config keys alone."""
    if str(raw.get("quant_method", "")).lower() != "awq":
        return False
    bits, group, zero_point = raw.get("bits"), raw.get("group_size"), raw.get("zero_point")
    if bits is None or group is None or zero_point is None:
        return False
    return bits == 4 and group in MARLIN_GROUP_SIZES and zero_point is True


def test_quantization_config_as_vllm_and_transformers_read_it(tmp_path):
    _, config = saved(tmp_path, "llama")
    raw = config["quantization_config"]
    assert vllm_awq_config(raw) == {"bits": 4, "group_size": GROUP, "zero_point": True}
    assert marlin_compatible(raw), raw
    assert raw["version"] == "gemm", "vLLM's AWQ kernels read the GEMM layout: it must be the default"
    parsed = AwqConfig.from_dict(raw)
    assert (parsed.bits, parsed.group_size, parsed.zero_point, parsed.format) == (4, GROUP, True, "gemm")
    assert parsed.modules_to_not_convert == ["lm_head"]
    assert not should_convert_module("lm_head", parsed.modules_to_not_convert)
    assert should_convert_module("model.layers.0.self_attn.q_proj", parsed.modules_to_not_convert)
    assert config["torch_dtype" if "torch_dtype" in config else "dtype"] == "float16"
    # A GEMV checkpoint says so, for the loaders that read both layouts.
    _, gemv = saved(tmp_path / "gemv", "llama", "gemv")
    assert AwqConfig.from_dict(gemv["quantization_config"]).format == "gemv"


def unpack_reverse_order(words: torch.Tensor) -> torch.Tensor:
    """(rows, cols / 8) int32 -> (rows, cols): shifts 0..28, then the AWQ reverse order (vLLM, AutoAWQ)."""
    nibbles = torch.stack([(words >> (4 * i)) & 0xF for i in range(8)], dim=-1)  # (rows, cols / 8, 8) by slot
    return nibbles[..., AWQ_REVERSE_ORDER].reshape(words.shape[0], -1)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_gemm_values_decode_as_the_loaders_decode_them(tmp_path, kind):
    model = tiny_model(kind)
    quantized = quantize_all(model)
    reference = fake_quantized(model, quantized)
    tensors, _ = saved(tmp_path, kind)
    for name in quantized:
        q = unpack_reverse_order(tensors[f"{name}.qweight"])  # (in, out)
        zeros = unpack_reverse_order(tensors[f"{name}.qzeros"]).repeat_interleave(GROUP, dim=0)  # (in, out)
        scales = tensors[f"{name}.scales"].float().repeat_interleave(GROUP, dim=0)  # (in, out)
        weight = ((q - zeros).float() * scales).t()  # (out, in)
        torch.testing.assert_close(weight, reference.get_submodule(name).weight, rtol=0, atol=0, msg=name)


def pack_gemm(values: torch.Tensor) -> torch.Tensor:
    """Another tool's packing, from the format alone: (rows, cols) ints in [0, 16) -> (rows, cols / 8) int32."""
    grouped = values.to(torch.int64).reshape(values.shape[0], -1, 8)[..., AWQ_ORDER]  # (rows, words, 8) by slot
    words = sum(grouped[..., i] << (4 * i) for i in range(8))
    return (words - (words >> 31) * (1 << 32)).to(torch.int32).contiguous()  # as signed int32


def test_foreign_autoawq_checkpoint_loads_with_the_same_outputs(tmp_path):
    """Qwen2 (q/k/v biases), packed here without our packing code, loaded fused through the API."""
    model = tiny_model("qwen2")
    quantized = quantize_all(model)
    reference = fake_quantized(model, quantized)
    tensors = {}
    for name, p in model.state_dict().items():
        owner, _, leaf = name.rpartition(".")
        if owner in quantized and leaf == "weight":
            continue
        tensors[name] = p.half().contiguous()
    for name, qw in quantized.items():
        tensors[f"{name}.qweight"] = pack_gemm(qw.q.t())  # (in, out / 8)
        tensors[f"{name}.qzeros"] = pack_gemm(qw.zeros.t())  # (in / g, out / 8)
        tensors[f"{name}.scales"] = qw.scales.t().half().contiguous()  # (in / g, out)
    if model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    config = model.config.to_dict() | {"torch_dtype": "float16"}
    config["quantization_config"] = {"quant_method": "awq", "w_bit": 4, "q_group_size": GROUP, "zero_point": True, "version": "GEMM"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})

    loaded = AutoQuantForCausalLM.from_quantized(tmp_path, dtype=torch.float32, fuse_layers=True)
    with torch.no_grad():  # the checkpoint stores embeddings and norms in fp16 (dequantized weights stay exact)
        for name, p in reference.named_parameters():
            if name.rpartition(".")[0] not in quantized:
                p.copy_(p.half().float())
    x = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, reference(x).logits, rtol=1e-5, atol=1e-5)
    greedy = dict(attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(loaded.generate(x, **greedy), reference.generate(x, **greedy))
