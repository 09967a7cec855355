"""One position counter for all layers of a static cache (awq_core/static_cache.py)."""
import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer

from awq_core.decode import GraphedDecodeStep, graphable_cache
from awq_core.static_cache import SharedCounterLayer, counter_shared, share_position_counter
from quantized_tiny import quantized_pair
from test_decode import prompt


@torch.no_grad()
def decode(model, cache, first, steps):
    """Greedy decode `steps` tokens after `first` (batch, 1) through `cache`: (tokens, last logits)."""
    token, tokens = first, []
    for _ in range(steps):
        logits = model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1]  # (batch, vocab)
        token = logits.argmax(-1, keepdim=True)  # (batch, 1)
        tokens.append(token)
    return torch.cat(tokens, dim=1), logits


@torch.no_grad()
def prefilled(model, x, max_len=32):
    cache = StaticCache(config=model.config, max_cache_len=max_len)
    out = model(input_ids=x, past_key_values=cache, use_cache=True)
    return cache, out.logits[:, -1:].argmax(-1)  # (batch, 1)


def test_shared_counter_decodes_what_per_layer_counters_decode():
    model, _ = quantized_pair("llama")
    x = prompt()
    plain, first = prefilled(model, x)
    shared, _ = prefilled(model, x)
    assert share_position_counter(shared)
    assert counter_shared(shared) and graphable_cache(shared)
    assert [layer.advances for layer in shared.layers] == [False] * (len(shared.layers) - 1) + [True]
    expected_tokens, expected_logits = decode(model, plain, first, 6)
    tokens, logits = decode(model, shared, first, 6)
    assert torch.equal(tokens, expected_tokens) and torch.equal(logits, expected_logits)
    for a, b in zip(plain.layers, shared.layers):  # the same keys and values at the same slots
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert int(shared.get_seq_length()) == int(plain.get_seq_length()) == x.shape[1] + 6
    shared.reset()  # zeroes the one counter; a new prompt then fills from slot 0
    assert int(shared.get_seq_length()) == 0
    with torch.no_grad():
        model(input_ids=prompt(seed=1), past_key_values=shared, use_cache=True)
    assert int(shared.get_seq_length()) == 10 and counter_shared(shared)


def test_share_is_idempotent_and_refuses_layers_at_different_positions():
    model, _ = quantized_pair("llama")
    cache, _ = prefilled(model, prompt())
    assert share_position_counter(cache) and share_position_counter(cache)
    other, _ = prefilled(model, prompt())
    other.layers[1].cumulative_length.add_(1)  # as if a forward had skipped layer 0's update
    assert not share_position_counter(other)
    assert all(type(layer) is StaticLayer for layer in other.layers), "left as it was"
    assert type(cache.layers[0]) is SharedCounterLayer


def test_decode_steps_switch_the_cache_to_one_counter():
    model, _ = quantized_pair("llama")
    cache, first = prefilled(model, prompt())
    step = GraphedDecodeStep(model)  # on the CPU: eager steps through the static buffers
    step(input_ids=first, past_key_values=cache, use_cache=True)
    assert counter_shared(cache) and int(cache.get_seq_length()) == 11
    kept, first = prefilled(model, prompt())
    GraphedDecodeStep(model, share_counter=False)(input_ids=first, past_key_values=kept, use_cache=True)
    assert all(type(layer) is StaticLayer for layer in kept.layers)
