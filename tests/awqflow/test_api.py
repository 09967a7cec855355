import json

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedModel

from awq_core.config import Method, QuantConfig, Version
from awq_core.fused_linear import LinearShard
from awq_core.qlinear import KernelMode, WQLinear
from awqflow import AutoAWQForCausalLM, AutoQuantForCausalLM
from awqflow.api import calibration_file, parse_quant_config, with_calibration
from tiny_models import save_tiny_model


def test_autoawq_dict_and_our_names_give_the_same_config():
    autoawq = parse_quant_config({"zero_point": True, "q_group_size": 64, "w_bit": 4, "version": "GEMM"})
    ours = parse_quant_config({"zero_point": True, "group_size": 64, "w_bit": 4, "version": "gemm"})
    transformers_style = parse_quant_config({"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True})
    assert autoawq == ours == transformers_style == QuantConfig(group_size=64)
    assert parse_quant_config({"version": "GEMV", "method": "rtn"}).version is Version.GEMV
    assert parse_quant_config({"method": "RTN"}).method is Method.RTN
    config = QuantConfig(group_size=32)
    assert parse_quant_config(config) is config
    assert parse_quant_config(None) == QuantConfig()


def test_bad_quant_configs_say_what_to_change():
    with pytest.raises(ValueError, match="unknown key 'groupsize'.*q_group_size"):
        parse_quant_config({"groupsize": 128})
    with pytest.raises(ValueError, match="contradicts"):
        parse_quant_config({"w_bit": 4, "bits": 8})
    with pytest.raises(TypeError, match="QuantConfig or a dict"):
        parse_quant_config("w4")


def test_calibration_texts_become_one_file_named_by_content(tmp_path):
    texts = ["first document\n\n\n\nwith a gap", "second"]
    path = calibration_file(texts, tmp_path)
    assert path == calibration_file(list(texts), tmp_path)
    assert path != calibration_file(["other"], tmp_path)
    from awq_core.calibration import load_documents

    assert load_documents(str(path)) == ["first document\n\nwith a gap", "second"]
    config = with_calibration(QuantConfig(), texts, n_samples=4, seqlen=32, root=tmp_path)
    assert config.calibration.source == str(path.resolve()) and config.calibration.n_samples == 4
    with pytest.raises(TypeError, match="list of texts"):
        with_calibration(QuantConfig(), 42, None, None, tmp_path)


def test_constructor_and_save_before_quantize_are_refused(tmp_path):
    with pytest.raises(TypeError, match="from_pretrained"):
        AutoQuantForCausalLM()
    with pytest.raises(RuntimeError, match="call quantize"):
        AutoQuantForCausalLM.from_pretrained(tmp_path).save_quantized(tmp_path / "out")
    with pytest.raises(ValueError, match="dtype"):
        AutoQuantForCausalLM.from_pretrained(tmp_path, dtype="float8")
    assert AutoAWQForCausalLM is AutoQuantForCausalLM


@pytest.mark.usefixtures("prefect_harness")
def test_autoawq_workflow_on_a_tiny_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default run directory goes under ./runs
    model_dir = save_tiny_model(tmp_path / "tiny", "qwen2")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoAWQForCausalLM.from_pretrained(model_dir)
    assert model.tokenizer.vocab_size == tokenizer.vocab_size
    assert model._model is None, "the float weights load only when used"
    model.quantize(
        tokenizer, quant_config={"zero_point": True, "q_group_size": 32, "w_bit": 4, "version": "GEMM", "n_grid": 5},
        calib_data=["a short calibration text about numbers and words. " * 40] * 4, n_samples=4, seqlen=32,
        eval_windows=1,
    )  # fmt: skip
    assert model.report["method"] == "awq" and model.quant_config.group_size == 32
    assert isinstance(model.model.model.layers[0].self_attn.q_proj, WQLinear)

    out = model.save_quantized(tmp_path / "saved")
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["group_size"] == 32 and config["quantization_config"]["version"] == "gemm"
    assert (out / "tokenizer.json").is_file() and (out / "awqflow_layers.jsonl").is_file()

    loaded = AutoQuantForCausalLM.from_quantized(out, dtype=torch.float32, kernel="torch", fuse_layers=True, fast_decode=True)
    assert isinstance(loaded, PreTrainedModel)
    assert isinstance(loaded.model.layers[1].mlp.up_proj, LinearShard)
    assert all(m.kernel is KernelMode.TORCH for m in loaded.modules() if isinstance(m, WQLinear))
    assert loaded.generation_config.cache_implementation == "static"
    assert loaded.fast_decode_step.compiled, "fast_decode=True decodes with the compiled step"
    assert loaded.config._attn_implementation == "awqflow_decode", "fast decode: one-token steps use our attention"

    x = tokenizer("numbers and words", return_tensors="pt")
    with torch.no_grad():
        expected = model(**x).logits  # the wrapper's model: the flow's checkpoint, unfused
        torch.testing.assert_close(loaded(**x).logits, expected, rtol=1e-5, atol=1e-5)
    greedy = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(loaded.generate(**x, **greedy), model.generate(**x, **greedy))

    # Quantizing again with the same arguments resumes the run: every stage comes from the cache.
    again = AutoQuantForCausalLM.from_pretrained(model_dir).quantize(
        quant_config={"q_group_size": 32, "n_grid": 5},
        calib_data=["a short calibration text about numbers and words. " * 40] * 4, n_samples=4, seqlen=32,
        eval_windows=1,
    )  # fmt: skip
    assert again.report["stages"]["capture"]["computed"] == 0


def test_from_quantized_checks_its_options(tmp_path):
    with pytest.raises(ValueError, match="kernel='cuda'"):
        AutoQuantForCausalLM.from_quantized(tmp_path, kernel="cuda")
    with pytest.raises(ValueError, match="fast_decode='fast'.*'graphs'"):
        AutoQuantForCausalLM.from_quantized(tmp_path, fast_decode="fast")


@pytest.mark.parametrize("value, compiles", [(True, True), ("compile", True), ("graphs", False)])
def test_fast_decode_values(value, compiles):
    from awqflow.api import fast_decode_compiles

    assert fast_decode_compiles(value) is compiles


def test_autogptq_dict_gives_a_gptq_config():
    config = parse_quant_config({"bits": 3, "group_size": 32, "desc_act": True, "sym": True, "damp_percent": 0.05})
    assert config.method is Method.GPTQ and config.w_bit == 3 and config.group_size == 32
    assert config.gptq.desc_act and config.gptq.damp_percent == 0.05 and not config.zero_point
    assert parse_quant_config({"quant_method": "gptq", "bits": 8}).method is Method.GPTQ


@pytest.mark.usefixtures("prefect_harness")
def test_gptq_workflow_on_a_tiny_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_dir = save_tiny_model(tmp_path / "tiny", "llama")
    model = AutoQuantForCausalLM.from_pretrained(model_dir)
    model.quantize(quant_config={"bits": 4, "group_size": 32, "desc_act": True}, calib_data="builtin",
                   n_samples=4, seqlen=32, eval_windows=1)  # fmt: skip
    assert model.report["method"] == "gptq"
    out = model.save_quantized(tmp_path / "saved")
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "gptq"
    loaded = AutoQuantForCausalLM.from_quantized(out, dtype=torch.float32, kernel="torch", fuse_layers=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    x = tokenizer("numbers and words", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, model(**x).logits, rtol=1e-5, atol=1e-5)
    greedy = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(loaded.generate(**x, **greedy), model.generate(**x, **greedy))
