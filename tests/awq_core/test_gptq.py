"""GPTQ: Hessians, the column-by-column update, act-order, static groups, dampening, the block recipe."""
import pytest
import torch

from awq_core.awq import quantize_model
from awq_core.capture import capture_block_kwargs, capture_first_block_inputs
from awq_core.config import GPTQConfig, QuantConfig
from awq_core.gptq import Hessian, HessianError, gptq_quantize, inverse_hessian_factor, relative_hessian_error
from awq_core.gptq_block import accumulate_hessians, sequential_steps
from awq_core.quantizer import quantize
from awq_core.registry import detect_architecture, get_blocks
from tiny_models import tiny_model


def correlated_inputs(tokens=1024, features=128, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(features, features, generator=gen) / features**0.5
    return torch.randn(tokens, features, generator=gen) @ mix * torch.linspace(0.2, 3.0, features)


def hessian_of(x: torch.Tensor) -> torch.Tensor:
    h = Hessian(x.shape[-1])
    for chunk in x.split(100):
        h.add(chunk)
    return h.value()


def test_hessian_is_two_over_n_x_transpose_x():
    x = correlated_inputs(300, 16)
    expected = 2.0 / 300 * x.double().T @ x.double()
    torch.testing.assert_close(hessian_of(x).double(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(HessianError, match="no calibration inputs"):
        Hessian(4).value()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("zero_point", [True, False])
@pytest.mark.parametrize("options", [{}, {"desc_act": True}, {"desc_act": True, "static_groups": True}])
def test_gptq_beats_rtn_on_the_hessian_weighted_error(bits, zero_point, options):
    x = correlated_inputs()
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    h = hessian_of(x)
    result = gptq_quantize(w, h, bits, 32, zero_point, GPTQConfig(**options))
    rtn = quantize(w, bits, 32, zero_point).dequantize()
    assert relative_hessian_error(w, result.weight.dequantize(), h) < relative_hessian_error(w, rtn, h)
    q = result.weight.q
    assert q.dtype == torch.int32 and int(q.min()) >= 0 and int(q.max()) < 2**bits
    assert torch.equal(result.weight.scales, result.weight.scales.half().float()), "scales must be fp16-exact"


def test_act_order_g_idx_follows_the_hessian_diagonal():
    x = correlated_inputs()
    h = hessian_of(x)
    result = gptq_quantize(torch.randn(32, 128), h, 4, 32, True, GPTQConfig(desc_act=True))
    g_idx = result.weight.g_idx
    assert g_idx is not None and g_idx.shape == (128,)
    assert torch.equal(torch.bincount(g_idx.long()), torch.full((4,), 32)), "every group holds group_size columns"
    order = torch.argsort(torch.diag(h), descending=True)
    assert torch.equal(result.perm, order)
    assert torch.equal(g_idx[order], torch.arange(128, dtype=torch.int32) // 32), "groups are runs of the act order"


def test_static_groups_keep_the_natural_groups():
    h = hessian_of(correlated_inputs())
    w = torch.randn(32, 128)
    result = gptq_quantize(w, h, 4, 32, True, GPTQConfig(desc_act=True, static_groups=True))
    assert result.weight.g_idx is None and result.perm is not None
    rtn = quantize(w, 4, 32, True)
    assert result.weight.scales.shape == rtn.scales.shape


def test_group_size_minus_one_and_blocks_smaller_than_groups():
    h = hessian_of(correlated_inputs())
    w = torch.randn(16, 128)
    whole = gptq_quantize(w, h, 4, -1, True, GPTQConfig(block_size=16))
    assert whole.weight.group_size == 128 and whole.weight.scales.shape == (16, 1)
    small = gptq_quantize(w, h, 4, 64, True, GPTQConfig(block_size=16))
    large = gptq_quantize(w, h, 4, 64, True, GPTQConfig(block_size=128))
    # The lazy batch update is an exact reordering of the same arithmetic.
    assert torch.equal(small.weight.q, large.weight.q) or (small.weight.q != large.weight.q).float().mean() < 0.002


def test_dead_inputs_get_zero_weights():
    x = correlated_inputs()
    x[:, 5] = 0
    result = gptq_quantize(torch.randn(32, 128), hessian_of(x), 4, 32, True, GPTQConfig())
    assert torch.all(result.weight.dequantize()[:, 5].abs() <= result.weight.scales[:, 0] * 0.5 + 1e-6)


def test_dampening_is_raised_until_cholesky_succeeds():
    h = hessian_of(correlated_inputs(tokens=64))  # rank 64 < 128: singular
    h -= 0.05 * torch.diag(h).mean() * torch.eye(128)  # and indefinite
    upper, damp = inverse_hessian_factor(h, 0.01)
    assert damp > 0.05 and torch.isfinite(upper).all()
    result = gptq_quantize(torch.randn(8, 128), h, 4, 32, True, GPTQConfig(damp_percent=0.01))
    assert result.damp == damp


def test_unusable_hessians_raise_a_clear_error():
    h = hessian_of(correlated_inputs())
    with pytest.raises(HessianError, match="not positive definite"):
        inverse_hessian_factor(h - 10 * torch.diag(h).max() * torch.eye(128), 0.01)
    h[3, 3] = float("nan")
    with pytest.raises(HessianError, match="NaN"):
        gptq_quantize(torch.randn(8, 128), h, 4, 32, True, GPTQConfig())


def block_inputs(model, n=4, seqlen=32):
    arch = detect_architecture(model.config)
    ids = torch.randint(0, 128, (n, seqlen), generator=torch.Generator().manual_seed(0))
    hidden = capture_first_block_inputs(model, arch, ids, batch_size=2)
    return get_blocks(model, arch)[0], hidden, capture_block_kwargs(model, arch, ids[:1])[0]


def test_true_sequential_steps_follow_the_block():
    block, hidden, kwargs = block_inputs(tiny_model("llama"))
    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    steps = sequential_steps(block, hidden[:1], kwargs, names, true_sequential=True)
    assert steps == [tuple(names[:3]), ("self_attn.o_proj",), ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",)]
    assert sequential_steps(block, hidden[:1], kwargs, names, true_sequential=False) == [tuple(names)]


def test_shared_inputs_share_one_hessian():
    block, hidden, kwargs = block_inputs(tiny_model("qwen2"))
    hessians = accumulate_hessians(block, hidden, kwargs, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), 2)
    assert hessians["self_attn.q_proj"] is hessians["self_attn.k_proj"] is hessians["self_attn.v_proj"]
    assert hessians["self_attn.q_proj"].count == 4 * 32


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3_text"])
@pytest.mark.parametrize("options", [{}, {"desc_act": True}])
def test_gptq_beats_rtn_on_every_linear_of_a_tiny_model(kind, options):
    ids = torch.randint(0, 128, (8, 64), generator=torch.Generator().manual_seed(0))
    config = QuantConfig(method="gptq", group_size=32, gptq=GPTQConfig(**options))
    result = quantize_model(tiny_model(kind), ids, config, batch_size=4)
    assert len(result.metrics) == 14
    for m in result.metrics:
        assert m.final_error < m.rtn_error, f"{m.name}: GPTQ {m.final_error:.3g} >= RTN {m.rtn_error:.3g}"
        assert m.damp == 0.01 and m.gptq_loss is not None and m.gptq_loss > 0
    for qw in result.quantized.values():
        assert (qw.g_idx is not None) == bool(options)


def test_nan_activations_name_the_block():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.bias = None
        model.model.layers[0].mlp.down_proj.weight[:, 0] = float("inf")  # block 0's output becomes non-finite
    ids = torch.randint(0, 128, (2, 16))
    with pytest.raises((FloatingPointError, AssertionError), match="layers.0|NaN or Inf"):
        quantize_model(model, ids, QuantConfig(method="gptq", group_size=32))
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight[:] = float("nan")
    with pytest.raises(FloatingPointError, match="the input of model.layers.0"):
        quantize_model(model, ids, QuantConfig(method="gptq", group_size=32))
