"""Our GPTQ checkpoints as vLLM's and transformers' GPTQ loaders read them.

The expectations are written from those loaders' documented formats, not from our code:

- vLLM `GPTQConfig.from_config` reads `bits` (2, 3, 4, 8), `group_size`, `desc_act` and `lm_head`
  (False: the output layer stays float). `GPTQLinearMethod.create_weights` gives each quantized linear
  `qweight` int32 (in / pack_factor, out) with pack_factor = 32 / bits (a fraction for 3 bits: 3 words
  per 32 inputs), `g_idx` int32 (in,), `qzeros` int32 (groups, out / pack_factor) and `scales` in the
  activation dtype (groups, out), groups = in / group_size (1 for group_size -1).
- transformers `GPTQConfig` reads bits, group_size, desc_act, sym, damp_percent, true_sequential and
  the format (`checkpoint_format` or `format`: "gptq" is v1, whose qzeros hold zero - 1).
- Values: the words are a little-endian bit stream along the packed dimension; the weight of input j
  is scales[g_idx[j]] * (q - (stored_zero[g_idx[j]] + 1)).
"""
import json
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from transformers import GPTQConfig

from awq_core.awq import quantize_model
from awq_core.checkpoint import GPTQ_LAYOUT, replace_linears, save_quantized
from awq_core.config import GPTQConfig as OurGPTQConfig
from awq_core.config import QuantConfig
from tiny_models import tiny_model

GROUP = 32


def saved_gptq(tmp_path, bits, desc_act):
    model = tiny_model("qwen2")
    ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    config = QuantConfig(method="gptq", w_bit=bits, group_size=GROUP, gptq=OurGPTQConfig(desc_act=desc_act))
    result = quantize_model(model, ids, config, batch_size=2)
    fake = {name: qw.dequantize() for name, qw in result.quantized.items()}  # what the float model computes
    replace_linears(model, result.quantized, GPTQ_LAYOUT)
    save_quantized(model, tmp_path, config.hf_quantization_config())
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, json.loads((tmp_path / "config.json").read_text()), fake


def bit_stream_decode(words: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Unsigned `bits`-wide fields of a little-endian bit stream of uint32 words along `axis`."""
    w = np.ascontiguousarray(np.moveaxis(words.view(np.uint32), axis, -1)).astype("<u4")
    stream = np.unpackbits(w.view(np.uint8), axis=-1, bitorder="little")  # (..., words * 32)
    fields = stream.reshape(*stream.shape[:-1], -1, bits)
    values = (fields.astype(np.int64) << np.arange(bits)).sum(axis=-1)
    return np.moveaxis(values, -1, axis)


@pytest.mark.parametrize("bits,desc_act", [(2, False), (3, True), (4, True), (4, False), (8, False)])
def test_gptq_tensors_as_vllm_allocates_them(tmp_path, bits, desc_act):
    tensors, config, _ = saved_gptq(tmp_path, bits, desc_act)
    model = tiny_model("qwen2")
    pack_factor = Fraction(32, bits)
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name == "lm_head":
            continue
        n_in, n_out, groups = module.in_features, module.out_features, module.in_features // GROUP
        assert tensors[f"{name}.qweight"].dtype == torch.int32
        assert tuple(tensors[f"{name}.qweight"].shape) == (n_in / pack_factor, n_out)
        assert tensors[f"{name}.qzeros"].dtype == torch.int32
        assert tuple(tensors[f"{name}.qzeros"].shape) == (groups, n_out / pack_factor)
        assert tensors[f"{name}.scales"].dtype == torch.float16 and tuple(tensors[f"{name}.scales"].shape) == (groups, n_out)
        assert tensors[f"{name}.g_idx"].dtype == torch.int32 and tuple(tensors[f"{name}.g_idx"].shape) == (n_in,)
        assert f"{name}.weight" not in tensors
        if module.bias is not None:
            assert f"{name}.bias" in tensors
    assert "lm_head.weight" in tensors or model.config.tie_word_embeddings
    qc = config["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["bits"] == bits and qc["group_size"] == GROUP
    assert qc["desc_act"] is desc_act and qc["lm_head"] is False
    parsed = GPTQConfig.from_dict(qc)  # what transformers builds from it
    assert (parsed.bits, parsed.group_size, parsed.desc_act, parsed.sym, parsed.format) == (bits, GROUP, desc_act, False, "gptq")
    assert json.loads((tmp_path / "quantize_config.json").read_text())["bits"] == bits


@pytest.mark.parametrize("bits,desc_act", [(3, True), (4, True), (8, False)])
def test_gptq_values_decode_as_the_loaders_decode_them(tmp_path, bits, desc_act):
    tensors, _, fake = saved_gptq(tmp_path, bits, desc_act)
    for name, expected in fake.items():
        q = bit_stream_decode(tensors[f"{name}.qweight"].numpy(), bits, axis=0)  # (in, out)
        zeros = bit_stream_decode(tensors[f"{name}.qzeros"].numpy(), bits, axis=1) + 1  # (groups, out)
        scales = tensors[f"{name}.scales"].float().numpy()  # (groups, out)
        g = tensors[f"{name}.g_idx"].numpy()  # (in,)
        weight = scales[g] * (q - zeros[g])  # (in, out)
        np.testing.assert_allclose(weight.T, expected.numpy(), rtol=0, atol=1e-6, err_msg=name)
