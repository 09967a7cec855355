import pytest
import torch
from transformers import CompileConfig, StaticCache

from awq_core.decode import GraphedDecodeStep, enable_fast_decode, graphable_cache
from awq_core.fused_linear import fuse_linears
from quantized_tiny import quantized_pair


def prompt(batch=2, length=10, seed=0):
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def greedy(model, input_ids, n=12, **kwargs):
    return model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=n, min_new_tokens=n,
        do_sample=False, pad_token_id=0, **kwargs,
    )  # fmt: skip


def route_decode_steps_on_cpu(model) -> GraphedDecodeStep:
    """transformers hands decode steps to get_compiled_call only on accelerators unless told otherwise."""
    step = enable_fast_decode(model)
    model.generation_config.compile_config = CompileConfig()
    model.generation_config.compile_config._compile_all_devices = True
    return step


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma"])
def test_static_cache_greedy_equals_dynamic_cache_greedy(kind):
    model, _ = quantized_pair(kind)
    fuse_linears(model)
    x = prompt()
    dynamic = greedy(model, x)
    static = greedy(model, x, cache_implementation="static")
    assert torch.equal(static, dynamic)


def test_decode_steps_run_through_the_static_buffers():
    """Without a GPU the step runs eagerly, but on the same copied-in static buffers a graph would read."""
    model, _ = quantized_pair("llama")
    x = prompt()
    expected = greedy(model, x)
    step = route_decode_steps_on_cpu(model)
    assert model.generation_config.cache_implementation == "static"
    assert torch.equal(greedy(model, x), expected)
    assert step.step is not None and step.step.replays == 12 - 2, "every decode step after the first replays"
    assert not step.graphed and step.fallback_reason is None
    first_key = step.step.key
    assert torch.equal(greedy(model, prompt(seed=3)[:1]), greedy_reference(prompt(seed=3)[:1]))
    assert step.step.key != first_key, "a new batch size captures a new step"


def greedy_reference(x):
    model, _ = quantized_pair("llama")
    return greedy(model, x)


def test_sliding_window_caches_decode_eagerly():
    model, _ = quantized_pair("mistral")  # sliding_window=32: its static layers count positions in Python
    x = prompt()
    expected = greedy(model, x)
    step = route_decode_steps_on_cpu(model)
    assert torch.equal(greedy(model, x), expected)
    assert step.step is None and "StaticLayer" in step.fallback_reason


def test_graphable_cache():
    model, _ = quantized_pair("llama")
    cache = StaticCache(config=model.config, max_cache_len=32)
    assert not graphable_cache(cache), "not initialized before the prefill"
    with torch.no_grad():
        model(prompt(), past_key_values=cache, use_cache=True)
    assert graphable_cache(cache)
    assert not graphable_cache(None)


def load_benchmark(script: str = "decode"):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{script}.py"
    spec = importlib.util.spec_from_file_location(f"{script}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("batch", [1, 3])
def test_benchmark_harness_decodes_what_generate_decodes(batch):
    """The decode benchmark's own loop (static cache, explicit 4D masks, replayed steps) is greedy decoding."""
    model, _ = quantized_pair("llama")
    fuse_linears(model)
    harness = load_benchmark().Harness(model, batch=batch, prompt=7, new_tokens=9, use_graphs=True)
    tokens, _, _ = harness.run(9)
    assert harness.step.step.replays == 9 - 2
    expected = greedy(model, harness.prompt_ids, n=9)[:, 7:]
    assert torch.equal(tokens, expected)
    again, _, _ = harness.run(9)  # the cache is reset in place: the same step replays
    assert torch.equal(again, expected) and harness.step.step.replays == (9 - 2) + (9 - 1), "no second capture"


def test_profile_bounds_drop_the_named_ops_and_still_compile_as_one_graph():
    """decode_profile.py --bound: the W4 model without its norms and activation (timings only) traces whole."""
    decode_profile = load_benchmark("decode_profile")
    model, _ = quantized_pair("llama")
    fuse_linears(model)
    decode_profile.drop_for_bound(model, ["norms", "activation"])
    layer = model.model.layers[0]
    assert isinstance(layer.input_layernorm, torch.nn.Identity) and isinstance(layer.post_attention_layernorm, torch.nn.Identity)
    x = torch.randn(1, 3, model.config.hidden_size)
    with torch.no_grad():
        assert torch.equal(layer.mlp(x), layer.mlp.down_proj(layer.mlp.gate_proj(x)))
        ids = prompt(batch=1, length=5)
        compiled = torch.compile(model, fullgraph=True)  # a graph break would raise here
        assert torch.allclose(compiled(ids).logits, model(ids).logits, atol=1e-4)
