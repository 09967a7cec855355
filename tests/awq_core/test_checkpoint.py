"""Checkpoint save/load: same logits after a round trip, foreign AutoAWQ checkpoints, clear errors."""
import json

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig

from awq_core.checkpoint import CheckpointError, load_quantized, replace_linears, save_quantized
from awq_core.packing import Version
from awq_core.quantizer import QuantizedWeight, quantize

GROUP = 64
VOCAB = 256


def quant_config(version="gemm") -> dict:
    return {
        "quant_method": "awq",
        "bits": 4,
        "group_size": GROUP,
        "zero_point": True,
        "version": version,
        "modules_to_not_convert": ["lm_head"],
    }


def tiny_llama(tied: bool = True) -> nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, tie_word_embeddings=tied,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    # fp16-representable weights, so that a checkpoint written in fp16 holds exactly the same model.
    for p in model.parameters():
        p.data = p.data.half().float()
    return model


def quantize_linears(model: nn.Module) -> dict[str, QuantizedWeight]:
    """Every linear but lm_head, with scales rounded to fp16 as the checkpoint stores them."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name != "lm_head":
            qw = quantize(module.weight, 4, GROUP)
            out[name] = QuantizedWeight(qw.q, qw.scales.half().float(), qw.zeros, 4, qw.group_size)
    return out


def fake_quantized_model(model: nn.Module, quantized: dict[str, QuantizedWeight]) -> nn.Module:
    """The reference: the same model with each linear's weight set to its dequantized value."""
    for name, qw in quantized.items():
        model.get_submodule(name).weight.data = qw.dequantize()
    return model


@pytest.fixture
def input_ids():
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids).logits.float()


def build_quantized(version="gemm", tied=True):
    """(WQLinear model, fake-quantized reference model), both float32."""
    model = tiny_llama(tied)
    quantized = quantize_linears(model)
    reference = fake_quantized_model(tiny_llama(tied), quantized)
    return replace_linears(model, quantized, version), reference


def read_all(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


# ---- round trip ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["gemm", "gemv"])
@pytest.mark.parametrize("max_shard_size", ["2GB", "20KB"])
def test_save_load_same_logits(tmp_path, input_ids, version, max_shard_size):
    model, reference = build_quantized(version)
    expected = logits(reference, input_ids)
    torch.testing.assert_close(logits(model, input_ids), expected, rtol=1e-5, atol=1e-5)

    save_quantized(model, tmp_path, quant_config(version), max_shard_size=max_shard_size, dtype=None)
    sharded = max_shard_size == "20KB"
    assert (tmp_path / "model.safetensors.index.json").is_file() == sharded
    assert not list(tmp_path.glob(".tmp-save-*")), "staging directory left behind"
    assert json.loads((tmp_path / "config.json").read_text())["quantization_config"] == quant_config(version)

    loaded = load_quantized(tmp_path, dtype=torch.float32)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight, "tied embeddings must stay tied"
    assert type(loaded.lm_head) is nn.Linear
    assert loaded.model.layers[0].self_attn.q_proj.version is Version(version)
    torch.testing.assert_close(logits(loaded, input_ids), logits(model, input_ids), rtol=0, atol=0)

    half = load_quantized(tmp_path)  # default fp16
    assert half.model.embed_tokens.weight.dtype == torch.float16
    torch.testing.assert_close(logits(half, input_ids), expected, rtol=0.02, atol=0.02)


def test_float_tensors_are_saved_as_fp16_by_default(tmp_path):
    model, _ = build_quantized("gemm")
    assert model.model.embed_tokens.weight.dtype == torch.float32
    save_quantized(model, tmp_path, quant_config())
    tensors, _ = read_all(tmp_path / "model.safetensors")
    assert tensors["model.embed_tokens.weight"].dtype == torch.float16
    assert tensors["model.norm.weight"].dtype == torch.float16
    assert tensors["model.layers.0.mlp.up_proj.qweight"].dtype == torch.int32
    assert tensors["model.layers.0.mlp.up_proj.scales"].dtype == torch.float16


def test_saved_files(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"[UNK]": VOCAB - 1}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    model, _ = build_quantized()
    save_quantized(model, tmp_path, quant_config(), tokenizer=tokenizer)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "tokenizer_config.json").is_file()
    tensors, metadata = read_all(tmp_path / "model.safetensors")
    assert metadata.get("format") == "pt"  # transformers and vLLM expect it
    assert "lm_head.weight" not in tensors, "tied lm_head is stored once, as the embedding"
    assert tensors["model.layers.0.self_attn.q_proj.qweight"].dtype == torch.int32
    assert tensors["model.layers.0.self_attn.q_proj.qweight"].shape == (64, 64 // 8)
    assert tensors["model.layers.0.mlp.down_proj.scales"].shape == (128 // GROUP, 64)
    assert tensors["model.layers.0.mlp.down_proj.scales"].dtype == torch.float16

    # Saving again, sharded, into the same directory drops the old single file (it would shadow the index).
    save_quantized(model, tmp_path, quant_config(), max_shard_size="20KB")
    assert not (tmp_path / "model.safetensors").exists()
    assert (tmp_path / "model.safetensors.index.json").is_file()


def test_untied_lm_head_round_trip(tmp_path, input_ids):
    model, reference = build_quantized(tied=False)
    save_quantized(model, tmp_path, quant_config())
    loaded = load_quantized(tmp_path, dtype=torch.float32)
    assert loaded.lm_head.weight is not loaded.model.embed_tokens.weight
    torch.testing.assert_close(logits(loaded, input_ids), logits(reference, input_ids), rtol=1e-5, atol=1e-5)


def test_config_must_match_layers(tmp_path):
    model, _ = build_quantized("gemm")
    with pytest.raises(CheckpointError, match="version=gemm"):
        save_quantized(model, tmp_path, quant_config("gemv"))
    with pytest.raises(CheckpointError, match="quant_method"):
        save_quantized(model, tmp_path, quant_config() | {"quant_method": "gptq"})


# ---- checkpoints written by another tool ----------------------------------------------------------


def autoawq_pack(intweight: torch.Tensor, order_map: list[int]) -> torch.Tensor:
    """AutoAWQ's own packing loop (awq/modules/linear/gemm.py, gemv.py), transcribed: int32 shifts and ors."""
    pack_num = 8
    packed = torch.zeros((intweight.shape[0], intweight.shape[1] // pack_num), dtype=torch.int32)
    for col in range(intweight.shape[1] // pack_num):
        for i in range(pack_num):
            packed[:, col] |= intweight[:, col * pack_num + order_map[i]] << (i * 4)
    return packed


def autoawq_layer_tensors(qw: QuantizedWeight, version: str) -> dict[str, torch.Tensor]:
    out_features, in_features = qw.q.shape
    if version == "GEMM":
        return {
            "qweight": autoawq_pack(qw.q.t().contiguous(), [0, 2, 4, 6, 1, 3, 5, 7]),
            "qzeros": autoawq_pack(qw.zeros.t().contiguous(), [0, 2, 4, 6, 1, 3, 5, 7]),
            "scales": qw.scales.t().contiguous().half(),
        }
    groups = in_features // qw.group_size
    base = -(-groups // 8)
    mult = {32: 4, 64: 2}.get(qw.group_size, 1)
    width = -(-base // mult) * mult  # AutoAWQ's calculate_zeros_width
    scales = torch.zeros(out_features, width * 8, dtype=torch.float16)
    scales[:, :groups] = qw.scales
    zeros = torch.zeros(out_features, width * 8, dtype=torch.int32)
    zeros[:, :groups] = qw.zeros
    return {
        "qweight": autoawq_pack(qw.q, list(range(8))),
        "qzeros": autoawq_pack(zeros, list(range(8))),
        "scales": scales,
    }


def write_foreign_checkpoint(model_dir, version: str, sharded: bool):
    """An AutoAWQ-style checkpoint: fp16 tensors, old config keys, no lm_head.weight (tied)."""
    model = tiny_llama()
    quantized = quantize_linears(model)
    tensors = {}
    for name, p in model.state_dict().items():
        module_name = name.rpartition(".")[0]
        if module_name in quantized or name == "lm_head.weight":
            continue
        tensors[name] = p.half().contiguous()
    for name, qw in quantized.items():
        for key, t in autoawq_layer_tensors(qw, version).items():
            tensors[f"{name}.{key}"] = t
    config = model.config.to_dict()
    config["torch_dtype"] = "float16"
    config["quantization_config"] = {
        "quant_method": "awq", "w_bit": 4, "q_group_size": GROUP, "zero_point": True,
        "version": version, "modules_to_not_convert": None,
    }  # fmt: skip
    model_dir.mkdir(exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(config))
    if not sharded:
        save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
        return quantized
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, model_dir / file, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(keys, file)
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return quantized


@pytest.mark.parametrize("version,sharded", [("GEMM", False), ("GEMM", True), ("gemv", False)])
def test_loads_foreign_autoawq_checkpoint(tmp_path, input_ids, version, sharded):
    quantized = write_foreign_checkpoint(tmp_path / "foreign", version, sharded)
    foreign = load_quantized(tmp_path / "foreign", dtype=torch.float32)

    ours, _ = build_quantized(version.lower())
    torch.testing.assert_close(logits(foreign, input_ids), logits(ours, input_ids), rtol=0, atol=0)
    layer = foreign.get_submodule("model.layers.1.mlp.down_proj")
    assert torch.equal(layer.quantized_weight().q, quantized["model.layers.1.mlp.down_proj"].q)
    # And our writer produces the same bytes for every packed tensor.
    save_quantized(ours, tmp_path / "ours", quant_config(version.lower()))
    ours_tensors, _ = read_all(tmp_path / "ours" / "model.safetensors")
    for name, qw in quantized.items():
        for key, t in autoawq_layer_tensors(qw, version.upper()).items():
            assert torch.equal(ours_tensors[f"{name}.{key}"], t), f"{name}.{key}"


# ---- errors --------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    model, _ = build_quantized()
    save_quantized(model, tmp_path, quant_config())
    return tmp_path


def rewrite_weights(model_dir, edit):
    path = model_dir / "model.safetensors"
    tensors, metadata = read_all(path)
    edit(tensors)
    save_file(tensors, path, metadata=metadata)


def test_truncated_file(saved):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated or corrupt"):
        load_quantized(saved)


def test_wrong_shape(saved):
    key = "model.layers.1.self_attn.o_proj.qzeros"
    rewrite_weights(saved, lambda t: t.__setitem__(key, torch.zeros(2, 8, dtype=torch.int32)))
    message = r"model\.safetensors: tensor .*o_proj\.qzeros has shape \(2, 8\), expected \(1, 8\)"
    with pytest.raises(CheckpointError, match=message):
        load_quantized(saved)


def test_wrong_dtype(saved):
    key = "model.layers.0.mlp.up_proj.qweight"
    rewrite_weights(saved, lambda t: t.__setitem__(key, t[key].float()))
    with pytest.raises(CheckpointError, match=r"up_proj\.qweight has dtype torch\.float32, expected torch\.int32"):
        load_quantized(saved)


def test_missing_and_unexpected_tensors(saved):
    rewrite_weights(saved, lambda t: t.pop("model.layers.0.self_attn.k_proj.scales"))
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.0\.self_attn\.k_proj\.scales"):
        load_quantized(saved)
    restored = {"model.layers.0.self_attn.k_proj.scales": torch.zeros(1, 32).half(), "extra.weight": torch.zeros(3)}
    rewrite_weights(saved, lambda t: t.update(restored))
    with pytest.raises(CheckpointError, match=r"unexpected tensors: extra\.weight"):
        load_quantized(saved)


def test_unquantized_layer_hint(saved):
    def dequantize_one(t):
        for key in ("qweight", "qzeros", "scales"):
            t.pop(f"model.layers.0.mlp.gate_proj.{key}")
        t["model.layers.0.mlp.gate_proj.weight"] = torch.zeros(128, 64).half()

    rewrite_weights(saved, dequantize_one)
    with pytest.raises(CheckpointError, match="modules_to_not_convert"):
        load_quantized(saved)


def test_config_errors(saved):
    config_path = saved / "config.json"
    config = json.loads(config_path.read_text())

    config_path.write_text(json.dumps({k: v for k, v in config.items() if k != "quantization_config"}))
    with pytest.raises(CheckpointError, match="no `quantization_config`"):
        load_quantized(saved)

    config_path.write_text(json.dumps(config | {"quantization_config": {"quant_method": "bitsandbytes", "bits": 4}}))
    with pytest.raises(CheckpointError, match="quant_method='bitsandbytes' is not supported; 'awq' and 'gptq' are"):
        load_quantized(saved)

    config_path.write_text(json.dumps(config | {"quantization_config": {"quant_method": "gptq", "bits": 4}}))
    with pytest.raises(CheckpointError, match="group_size=None"):
        load_quantized(saved)

    config_path.write_text(json.dumps(config | {"quantization_config": quant_config("exllama")}))
    with pytest.raises(CheckpointError, match="exllama"):
        load_quantized(saved)

    config_path.unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        load_quantized(saved)


def test_pickles_are_refused(saved):
    (saved / "model.safetensors").rename(saved / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled .bin weights are never loaded"):
        load_quantized(saved)


def test_missing_shard(tmp_path):
    model, _ = build_quantized()
    save_quantized(model, tmp_path, quant_config(), max_shard_size="20KB")
    next(tmp_path.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="listed in model.safetensors.index.json but missing"):
        load_quantized(tmp_path)
