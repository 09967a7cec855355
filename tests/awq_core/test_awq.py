import pytest
import torch

from awq_core.awq import iterate_blocks, quantize_block, quantize_model
from awq_core.capture import capture_block_features, capture_block_kwargs, capture_first_block_inputs
from awq_core.checkpoint import load_quantized, replace_linears, save_quantized
from awq_core.clip_search import search_clip
from awq_core.config import ClipConfig, QuantConfig
from awq_core.quantizer import fake_quantize
from awq_core.registry import active_groups, detect_architecture, get_blocks, get_module
from awq_core.scale_search import search_scales
from tiny_models import tiny_model

FAST = dict(n_grid=10, clip=ClipConfig(n_grid=10, n_sample_tokens=64))


def calib_ids(model, n=4, seqlen=32, seed=0):
    return torch.randint(0, model.config.vocab_size, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def with_outlier_channels(model, factor=30.0):
    """Real LLM activations have a few huge channels; give the tiny model some so AWQ has work to do."""
    with torch.no_grad():
        for block in get_blocks(model, detect_architecture(model.config)):
            for norm in (block.input_layernorm, block.post_attention_layernorm):
                norm.weight[:4] *= factor
    return model


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3_text", "llama-mha"])
def test_scale_search_never_worse_than_rtn_and_wins_on_outliers(kind):
    model = with_outlier_channels(tiny_model(kind)) if kind != "gemma3_text" else tiny_model(kind)
    arch = detect_architecture(model.config)
    ids = calib_ids(model)
    hidden = capture_first_block_inputs(model, arch, ids, batch_size=2)
    kwargs = capture_block_kwargs(model, arch, ids[:1])[0]
    block = get_blocks(model, arch)[0]
    groups = active_groups(block, arch)
    _, feats, calls = capture_block_features(block, hidden, kwargs, [g.inspect for g in groups], batch_size=2)
    improved = 0
    for group in groups:
        linears = [get_module(block, n) for n in group.linears]
        before = [l.weight.clone() for l in linears]
        x = feats[group.linears[0]]
        result = search_scales(linears, x, calls[group.inspect], calls[group.inspect](x),
                               w_bit=4, group_size=32, zero_point=True, n_grid=20, duo_scaling=True)
        assert result.loss <= result.rtn_loss
        assert torch.isfinite(result.scales).all() and (result.scales > 0).all()
        improved += result.loss < result.rtn_loss
        for l, w in zip(linears, before):
            assert torch.equal(l.weight, w), "search must restore the weights"
    if kind != "gemma3_text":
        assert improved >= 1, "with outlier channels at least one group must beat RTN"


def test_clip_search_never_worse_than_no_clip():
    torch.manual_seed(0)
    w = torch.randn(48, 64)
    w[:, 3] *= 8  # a heavy-tailed column makes clipping worthwhile
    x = torch.randn(2, 40, 64)
    result = search_clip(w, x, w_bit=4, group_size=32, zero_point=True, max_shrink=0.5, n_grid=20, n_sample_tokens=80)
    assert result.max_val.shape == (48, 2) and ((result.ratios <= 1) & (result.ratios >= 0.5)).all()
    clipped = torch.max(torch.min(w.view(48, 2, 32), result.max_val[..., None]), -result.max_val[..., None]).view(48, 64)
    xs = x.reshape(-1, 64)

    def err(weight):
        q = fake_quantize(weight, 4, 32, True)
        return ((xs @ q.T - xs @ w.T) ** 2).mean()

    assert err(clipped) <= err(w) + 1e-6
    assert (result.ratios < 1).any()


def test_rtn_leaves_no_scales_and_matches_plain_round_to_nearest():
    model = tiny_model("llama")
    original = {n: p.clone() for n, p in model.named_parameters()}
    result = quantize_model(model, calib_ids(model), QuantConfig(method="rtn", group_size=32))
    for name, qw in result.quantized.items():
        w = original[name + ".weight"]
        assert torch.equal(qw.dequantize().to(w.dtype), fake_quantize(w, 4, 32, True))
    for m in result.metrics:
        assert m.scale_ratio is None and m.clip_ratio_mean is None
        assert m.final_error == pytest.approx(m.rtn_error, rel=1e-5)
    norms = [n for n in original if "norm" in n]
    assert all(torch.equal(dict(model.named_parameters())[n], original[n]) for n in norms)


def test_awq_records_every_linear_and_beats_rtn_on_outlier_model():
    model = with_outlier_channels(tiny_model("llama-mha"))
    result = quantize_model(model, calib_ids(model, n=8), QuantConfig(group_size=32, **FAST))
    assert len(result.metrics) == 2 * 7 and len(result.quantized) == 14
    names = {m.name for m in result.metrics}
    assert "model.layers.1.mlp.down_proj" in names and "lm_head" not in names
    assert any(m.scale_ratio is not None for m in result.metrics)
    assert any(m.clip_ratio_mean is not None for m in result.metrics)
    assert all(m.clip_ratio_mean is None for m in result.metrics if m.name.endswith(("q_proj", "k_proj")))
    total_rtn = sum(m.rtn_error for m in result.metrics)
    total_final = sum(m.final_error for m in result.metrics)
    assert total_final < total_rtn


def test_modules_to_not_convert_stay_float():
    model = tiny_model("llama")
    down = model.model.layers[0].mlp.down_proj.weight.clone()
    result = quantize_model(model, calib_ids(model), QuantConfig(method="rtn", group_size=32,
                                                                  modules_to_not_convert=("lm_head", "layers.0.mlp.down_proj")))
    assert "model.layers.0.mlp.down_proj" not in result.quantized
    assert "model.layers.1.mlp.down_proj" in result.quantized
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, down)


def test_quantized_inputs_switch_changes_only_later_blocks():
    base = with_outlier_channels(tiny_model("llama"))
    ids = calib_ids(base)
    a = quantize_model(tiny_copy(base), ids, QuantConfig(group_size=32, **FAST))
    b = quantize_model(tiny_copy(base), ids, QuantConfig(group_size=32, sequential_quantized_inputs=True, **FAST))
    block0 = [n for n in a.quantized if ".layers.0." in n]
    block1 = [n for n in a.quantized if ".layers.1." in n]
    assert all(torch.equal(a.quantized[n].q, b.quantized[n].q) for n in block0)
    assert any(not torch.equal(a.quantized[n].scales, b.quantized[n].scales) for n in block1)


def tiny_copy(model):
    import copy

    return copy.deepcopy(model)


def test_save_load_gives_the_fake_quantized_logits(tmp_path):
    model = with_outlier_channels(tiny_model("llama"))
    config = QuantConfig(group_size=32, **FAST)
    result = quantize_model(model, calib_ids(model), config)
    ids = calib_ids(model, n=2, seqlen=20, seed=5)
    with torch.no_grad():
        fake = model(input_ids=ids).logits
    replace_linears(model, result.quantized, config.version)
    save_quantized(model, tmp_path / "ckpt", config.hf_quantization_config(), dtype=None)  # exact floats
    loaded = load_quantized(tmp_path / "ckpt", dtype=torch.float32)
    with torch.no_grad():
        logits = loaded(input_ids=ids).logits
    assert (logits - fake).abs().max() <= 1e-4 * fake.abs().max()


def test_group_size_that_does_not_divide_names_layer_and_working_sizes():
    model = tiny_model("llama")
    with pytest.raises(ValueError) as err:
        next(iterate_blocks(model, calib_ids(model), QuantConfig(group_size=128)))
    message = str(err.value)
    assert "in_features=64" in message and "model.layers.0." in message and "32" in message


def test_nan_activations_give_a_clear_error():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight[5] = float("nan")
    ids = calib_ids(model)
    ids[0, 3] = 5
    with pytest.raises(FloatingPointError, match="non-finite activations"):
        quantize_model(model, ids, QuantConfig(method="rtn", group_size=32))
