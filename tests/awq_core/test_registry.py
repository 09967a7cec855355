import pytest
import torch

from awq_core.fuse import apply_scales
from awq_core.registry import (
    ARCHITECTURES,
    UnsupportedArchitectureError,
    active_groups,
    detect_architecture,
    get_blocks,
    get_module,
)
from tiny_models import CONFIGS, tiny_model


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"model_type": "llama"}, "llama"),
        ({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}, "qwen3"),
        ({"model_type": "something_new", "architectures": ["MistralForCausalLM"]}, "mistral"),
        ({"model_type": "gemma3_text"}, "gemma3_text"),
    ],
)
def test_detects_architecture_from_config_json(config, expected):
    assert detect_architecture(config).name == expected


def test_detects_from_transformers_config_object():
    assert detect_architecture(CONFIGS["qwen2"]()).name == "qwen2"


def test_unknown_architecture_names_it_and_lists_supported():
    with pytest.raises(UnsupportedArchitectureError) as err:
        detect_architecture({"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]})
    message = str(err.value)
    assert "gpt_neox" in message and "GPTNeoXForCausalLM" in message
    for arch in ARCHITECTURES:
        assert arch.name in message


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_every_group_resolves_to_real_modules(kind):
    model = tiny_model(kind)
    arch = detect_architecture(model.config)
    block = get_blocks(model, arch)[0]
    for group in active_groups(block, arch):
        prev = get_module(block, group.prev_op)
        for name in group.linears:
            linear = get_module(block, name)
            assert isinstance(linear, torch.nn.Linear)
            width = prev.out_features if isinstance(prev, torch.nn.Linear) else prev.weight.numel()
            assert width == linear.in_features, f"{kind}: {group.prev_op} does not feed {name}"
        get_module(block, group.inspect)


def test_v_to_o_group_only_without_grouped_query_attention():
    gqa, mha = tiny_model("llama"), tiny_model("llama-mha")
    arch = detect_architecture(gqa.config)
    assert "self_attn.v_proj" not in [g.prev_op for g in active_groups(get_blocks(gqa, arch)[0], arch)]
    assert "self_attn.v_proj" in [g.prev_op for g in active_groups(get_blocks(mha, arch)[0], arch)]


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_scale_fusion_leaves_float_outputs_unchanged(kind):
    model = tiny_model(kind)
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    arch = detect_architecture(model.config)
    generator = torch.Generator().manual_seed(2)
    fused = 0
    for block in get_blocks(model, arch):
        for group in active_groups(block, arch):
            width = get_module(block, group.linears[0]).in_features
            scales = torch.exp(torch.randn(width, generator=generator))  # spread over ~e^-3..e^3
            apply_scales(block, group, scales, arch)
            fused += 1
    assert fused >= 2 * len(get_blocks(model, arch))
    with torch.no_grad():
        after = model(input_ids=ids).logits
    scale = before.abs().max()
    assert (after - before).abs().max() / scale < 1e-5
