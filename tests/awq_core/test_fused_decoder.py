"""Decoder layers with their norms, activation and residual adds inside the W4 products (`fused_decoder.py`):
the same one-token steps as the model's own layers, on the PyTorch path and through the GEMV's epilogue."""
import pytest
import torch
import torch._dynamo
from transformers import DynamicCache, StaticCache

from awq_core.attention import use_decode_attention
from awq_core.fused_decoder import FusedDecoderLayer, fuse_decoder_layers, unfuse_decoder_layers, why_not_fusable
from awq_core.fused_linear import fuse_linears
from awq_core.qlinear import set_kernel
from awq_core.static_cache import share_position_counter
from quantized_tiny import quantized_pair
from test_decode import greedy, prompt, route_decode_steps_on_cpu

needs_interpreter = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU interpreter test; the GPU runs benchmarks/")


def fused_model(kind: str, dtype=torch.float32, kernel: str | None = None):
    model, _ = quantized_pair(kind)
    model = model.to(dtype)
    fuse_linears(model)
    if kernel:
        set_kernel(model, kernel)
    return model


@torch.no_grad()
def decode_logits(model, input_ids, steps=4, cache=None, after_prefill=None):
    """Prefill, then `steps` one-token steps fed the greedy tokens: the logits of every step, (steps, vocab)."""
    cache = DynamicCache(config=model.config) if cache is None else cache
    out = model(input_ids, past_key_values=cache, use_cache=True)
    if after_prefill is not None:
        after_prefill(cache)
    logits = []
    for _ in range(steps):
        token = out.logits[:, -1:].argmax(-1)  # (1, 1)
        out = model(token, past_key_values=cache, use_cache=True)
        logits.append(out.logits[0, -1].float())
    return torch.stack(logits)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_fused_layers_decode_the_same_logits(kind):
    """On the PyTorch path (float32) the fused ops are the same ops in another place: equal to rounding."""
    model = fused_model(kind)
    x = prompt(batch=1)
    before = decode_logits(model, x)
    assert fuse_decoder_layers(model) == model.config.num_hidden_layers
    assert all(isinstance(layer, FusedDecoderLayer) for layer in model.model.layers)
    torch.testing.assert_close(decode_logits(model, x), before, rtol=1e-4, atol=1e-4)
    assert unfuse_decoder_layers(model) == model.config.num_hidden_layers
    assert not any(isinstance(layer, FusedDecoderLayer) for layer in model.model.layers)
    torch.testing.assert_close(decode_logits(model, x), before, rtol=0, atol=0)


@needs_interpreter
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_fused_layers_through_the_gemv_epilogue(kind):
    """fp16 with the GEMV forced: the norms, silu(gate) * up and residual adds run in its epilogue
    (interpreted), and the steps' logits match the model's own layers on the same kernel."""
    model = fused_model(kind, torch.float16, kernel="gemv")
    x = prompt(batch=1, length=6)
    before = decode_logits(model, x, steps=2)
    fuse_decoder_layers(model)
    after = decode_logits(model, x, steps=2)
    assert torch.isfinite(after).all()
    torch.testing.assert_close(after, before, rtol=2e-2, atol=2e-2)


def test_batches_and_the_prefill_take_the_layers_own_forward(monkeypatch):
    """More than one token a step: the model's own code, so the products keep their kernels' own choice."""
    import awq_core.fused_decoder as fused_decoder

    model = fused_model("llama")
    fuse_decoder_layers(model)
    calls = []
    original = fused_decoder.fused_decode_forward
    monkeypatch.setattr(fused_decoder, "fused_decode_forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    with torch.no_grad():
        model(prompt(batch=2, length=1))  # 2 tokens a step
        model(prompt(batch=1, length=5))  # a prefill
    assert calls == []
    with torch.no_grad():
        model(prompt(batch=1, length=1))
    assert len(calls) == model.config.num_hidden_layers


def test_generate_with_fused_layers_equals_generate_without():
    model = fused_model("llama")
    x = prompt(batch=1)
    expected = greedy(model, x)
    route_decode_steps_on_cpu(model)
    fuse_decoder_layers(model)
    assert torch.equal(greedy(model, x), expected)


@pytest.mark.parametrize("kind,reason", [("gemma", "GemmaDecoderLayer is not among"),
                                         ("qwen3", "Qwen3DecoderLayer is not among")])
def test_other_layers_are_left_alone(kind, reason):
    model = fused_model(kind)
    assert why_not_fusable(model.model.layers[0]).startswith(reason)
    assert fuse_decoder_layers(model) == 0


def test_layers_without_fused_w4_linears_are_left_alone():
    model, reference = quantized_pair("llama")
    assert "q/k/v are not one fused W4 linear" in why_not_fusable(model.model.layers[0])
    fuse_linears(reference)  # float linears, fused
    assert "q/k/v are not one fused W4 linear" in why_not_fusable(reference.model.layers[0])
    assert fuse_decoder_layers(model) == 0 and fuse_decoder_layers(reference) == 0


@needs_interpreter
def test_fused_decode_step_traces_as_one_graph():
    model = fused_model("llama", torch.float16, kernel="gemv")
    fuse_decoder_layers(model)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(prompt(batch=1, length=4), past_key_values=cache, use_cache=True)  # eager: builds the repacks
        explanation = torch._dynamo.explain(model)(prompt(batch=1, length=1), past_key_values=cache, use_cache=True)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    ops = [str(n.target) for g in explanation.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert sum("w4a16_linear_fused" in op for op in ops) == 4 * model.config.num_hidden_layers


@needs_interpreter
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("shared_counter", [False, True])
def test_static_cache_steps_run_rotary_and_cache_write_in_the_attention_kernel(kind, shared_counter, monkeypatch):
    """On a static cache with our decode attention, a fused layer's rotary embedding, cache write and
    attention are one kernel call: the same logits, cache contents and positions as the model's own layers."""
    import awq_core.fused_decoder as fused_decoder

    model = fused_model(kind, torch.float16, kernel="gemv")
    assert use_decode_attention(model)
    x = prompt(batch=1, length=6)
    after_prefill = share_position_counter if shared_counter else None

    def run():
        cache = StaticCache(config=model.config, max_cache_len=16)
        return decode_logits(model, x, steps=3, cache=cache, after_prefill=after_prefill), cache

    before, cache_before = run()
    fuse_decoder_layers(model)
    calls = []
    original = fused_decoder.decode_attention_new_token
    monkeypatch.setattr(fused_decoder, "decode_attention_new_token", lambda *a: calls.append(1) or original(*a))
    after, cache_after = run()
    assert len(calls) == 3 * model.config.num_hidden_layers, "every layer of every step took the kernel"
    torch.testing.assert_close(after, before, rtol=2e-2, atol=2e-2)
    for layer_before, layer_after in zip(cache_before.layers, cache_after.layers):
        assert int(layer_after.cumulative_length) == int(layer_before.cumulative_length) == x.shape[1] + 3
        torch.testing.assert_close(layer_after.keys, layer_before.keys, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(layer_after.values, layer_before.values, rtol=2e-2, atol=2e-2)
        assert not layer_after.keys[:, :, x.shape[1] + 3 :].any(), "nothing written past the last token"


@needs_interpreter
def test_caches_the_kernel_cannot_write_keep_the_models_own_attention(monkeypatch):
    """A dynamic cache (no fixed slots) or SDPA attention: the model's rotary, update and attention."""
    import awq_core.fused_decoder as fused_decoder

    model = fused_model("llama", torch.float16, kernel="gemv")
    fuse_decoder_layers(model)
    calls = []
    monkeypatch.setattr(fused_decoder, "decode_attention_new_token", lambda *a: calls.append(1))
    x = prompt(batch=1, length=4)
    decode_logits(model, x, steps=1, cache=StaticCache(config=model.config, max_cache_len=8))  # on SDPA
    use_decode_attention(model)
    decode_logits(model, x, steps=1)  # a DynamicCache
    assert calls == []


@needs_interpreter
def test_static_cache_step_compiles_as_one_graph_with_the_cache_written_in_place():
    """Under torch.compile the kernel's op mutates the cache tensors themselves (no index_copy_ left in
    the graph), and the compiled step gives the eager step's logits, cache and positions."""
    model = fused_model("llama", torch.float16, kernel="gemv")
    use_decode_attention(model)
    fuse_decoder_layers(model)
    x = prompt(batch=1, length=4)

    @torch.no_grad()
    def step(forward):
        token, cache = step_inputs(model, x)
        return forward(token, past_key_values=cache, use_cache=True, cache_position=torch.tensor([4])), cache

    eager, eager_cache = step(model)
    explanation, _ = step(torch._dynamo.explain(model))
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    ops = [str(n.target) for g in explanation.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert sum("decode_attention_new_token" in op for op in ops) == model.config.num_hidden_layers
    assert not any("index_copy" in op for op in ops)
    torch._dynamo.reset()
    compiled, compiled_cache = step(torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False))
    torch.testing.assert_close(compiled.logits, eager.logits, rtol=0, atol=0)
    for ours, theirs in zip(compiled_cache.layers, eager_cache.layers):
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
        assert int(ours.cumulative_length) == int(theirs.cumulative_length) == 5


@torch.no_grad()
def step_inputs(model, x):
    """A prefilled static cache and the next token (1, 1): the arguments of a one-token step."""
    cache = StaticCache(config=model.config, max_cache_len=8)
    token = model(x, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
    return token, cache
