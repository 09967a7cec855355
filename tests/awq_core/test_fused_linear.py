import pytest
import torch
import torch.nn as nn

from awq_core.checkpoint import replace_linears
from awq_core.fused_linear import FusedLinear, LinearShard, fuse_linears, is_fused
from awq_core.qlinear import WQLinear, set_kernel
from quantized_tiny import quantize_all, quantized_pair
from tiny_models import tiny_model

KINDS = ["llama", "llama-mha", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3_text"]


def ids(batch=2, length=12, seed=1):
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model, input_ids):
    return model(input_ids).logits


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("version", ["gemm", "gemv"])
def test_fused_quantized_model_gives_the_same_logits(kind, version):
    model, _ = quantized_pair(kind, version)
    before = logits(model, ids())
    assert fuse_linears(model) == 2 * model.config.num_hidden_layers  # q/k/v and gate/up in every block
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert isinstance(attn.q_proj, LinearShard) and isinstance(mlp.up_proj, LinearShard)
    fused_qkv = attn.fused_q_proj_k_proj_v_proj.linear
    assert isinstance(fused_qkv, WQLinear) and fused_qkv.version.value == version
    assert fused_qkv.out_features == attn.q_proj.out_features + attn.k_proj.out_features + attn.v_proj.out_features
    torch.testing.assert_close(logits(model, ids()), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_fused_float_model_gives_the_same_logits(kind):
    model = tiny_model(kind)
    before = logits(model, ids())
    assert fuse_linears(model) == 4
    assert isinstance(model.model.layers[1].mlp.fused_gate_proj_up_proj.linear, nn.Linear)
    torch.testing.assert_close(logits(model, ids()), before, rtol=1e-5, atol=1e-5)


def test_fused_kernels_match_unfused_kernels():
    """The fused W4 product through the Triton kernels (interpreted on the CPU) equals the separate ones."""
    model, _ = quantized_pair("qwen2")
    model = model.half()
    set_kernel(model, "gemm")
    x = ids(1, 4)
    before = logits(model, x).float()
    fuse_linears(model)
    torch.testing.assert_close(logits(model, x).float(), before, rtol=2e-3, atol=2e-3)
    set_kernel(model, "gemv")
    torch.testing.assert_close(logits(model, x).float(), before, rtol=2e-2, atol=2e-2)


def shards_of_one_group():
    torch.manual_seed(0)
    linears = [nn.Linear(32, n, bias=True) for n in (16, 8, 8)]
    parent = nn.Module()
    for name, linear in zip(("a", "b", "c"), linears):
        setattr(parent, name, linear)
    reference = [nn.Linear(32, l.out_features).requires_grad_(False) for l in linears]
    for r, l in zip(reference, linears):
        r.load_state_dict(l.state_dict())
    from awq_core.fused_linear import fuse_group

    assert fuse_group(parent, ("a", "b", "c"))
    return parent, reference


@torch.no_grad()
def test_shards_recompute_for_a_new_or_changed_input():
    parent, (ra, rb, rc) = shards_of_one_group()
    fused: FusedLinear = parent.fused_a_b_c
    x, y = torch.randn(3, 32), torch.randn(3, 32)
    torch.testing.assert_close(parent.a(x), ra(x))
    torch.testing.assert_close(parent.b(y), rb(y))  # another tensor: not x's cached product
    torch.testing.assert_close(parent.a(x), ra(x))
    torch.testing.assert_close(parent.a(x), ra(x))  # the same shard twice on one tensor
    x.mul_(2)  # changed in place: the version counter forces a recompute
    torch.testing.assert_close(parent.b(x), rb(x))
    torch.testing.assert_close(parent.c(x), rc(x))
    torch.testing.assert_close(parent.a(x), ra(x))
    assert fused._output is None and fused._input is None, "all shards served: no activation kept"


def test_groups_with_an_unquantized_member_are_left_alone():
    model = tiny_model("llama")
    quantized = {n: qw for n, qw in quantize_all(model).items() if not n.endswith("k_proj")}
    replace_linears(model, quantized, "gemm")
    assert fuse_linears(model) == 2  # only gate/up: k_proj is float, q/v are WQLinear
    assert isinstance(model.model.layers[0].self_attn.k_proj, nn.Linear)
    assert isinstance(model.model.layers[0].mlp.gate_proj, LinearShard)


def test_fused_model_state_moves_and_lists_each_tensor_once():
    model, _ = quantized_pair("llama")
    fuse_linears(model)
    assert is_fused(model)
    keys = list(model.state_dict())
    assert "model.layers.0.self_attn.fused_q_proj_k_proj_v_proj.linear.qweight" in keys
    assert not any(k.startswith("model.layers.0.self_attn.q_proj.") for k in keys)
    model.to(torch.float64)
    assert model.model.layers[0].mlp.fused_gate_proj_up_proj.linear.scales.dtype == torch.float64


def test_a_fused_model_refuses_to_be_saved(tmp_path):
    from awq_core.checkpoint import CheckpointError, save_quantized
    from awq_core.config import QuantConfig

    model, _ = quantized_pair("llama", "gemm")
    fuse_linears(model)
    with pytest.raises(CheckpointError, match="fuse_layers=False"):
        save_quantized(model, tmp_path, QuantConfig(group_size=32).hf_quantization_config())
    assert not any(tmp_path.iterdir()), "nothing is written"
