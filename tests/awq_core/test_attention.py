"""awq_core.attention: transformers models decode through the split-slot kernel and match SDPA."""
import pytest
import torch

import triton_kernels
from awq_core.attention import ATTENTION, kernel_fits, use_decode_attention
from awq_core.decode import enable_fast_decode
from tiny_models import tiny_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on CPU the kernel runs on Triton's interpreter


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls that reach the kernel (the attention function looks it up at call time)."""
    calls = []
    real = triton_kernels.decode_attention

    def counted(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(triton_kernels, "decode_attention", counted)
    return calls


def decode(model, input_ids, n=8):
    """Greedy tokens and per-step logits (float32) through a static cache."""
    out = model.generate(
        input_ids, attention_mask=(input_ids != 0).long(), max_new_tokens=n, min_new_tokens=n, do_sample=False,
        pad_token_id=0, cache_implementation="static", output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    return out.sequences, torch.stack(out.logits, dim=1).float()


@pytest.mark.parametrize("kind", ["llama", "llama-mha", "qwen2", "gemma"])
def test_decode_through_the_kernel_matches_sdpa(kind, kernel_calls):
    prompt = torch.randint(1, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    prompt[1, :3] = 0  # left padding: the mask has holes at the front of sequence 1
    prompt = prompt.to(DEVICE)
    sdpa = tiny_model(kind, dtype=torch.float16).to(DEVICE)
    ours = tiny_model(kind, dtype=torch.float16).to(DEVICE)
    assert use_decode_attention(ours) and ours.config._attn_implementation == ATTENTION
    expected_tokens, expected_logits = decode(sdpa, prompt)
    tokens, logits = decode(ours, prompt)
    layers = ours.config.num_hidden_layers
    assert len(kernel_calls) == 7 * layers, "every one-token step of every layer ran the kernel (not the prefill)"
    assert all(shape[2] == 1 for shape in kernel_calls)
    assert torch.equal(tokens, expected_tokens)
    scale = expected_logits.abs().max()
    assert float((logits - expected_logits).abs().max() / scale) < 1e-2


def test_what_the_kernel_does_not_implement_goes_to_sdpa(kernel_calls):
    model = tiny_model("llama")  # float32: not a kernel dtype
    reference = tiny_model("llama")
    assert use_decode_attention(model)
    prompt = torch.randint(1, 128, (1, 6), generator=torch.Generator().manual_seed(1))
    assert torch.equal(decode(model, prompt)[0], decode(reference, prompt)[0])
    assert kernel_calls == []
    q = torch.zeros(1, 4, 1, 16, dtype=torch.float16, device=DEVICE)
    kv = torch.zeros(1, 2, 8, 16, dtype=torch.float16, device=DEVICE)
    assert kernel_fits(q, kv, kv, None, 0.0, {})
    assert not kernel_fits(q, kv, kv, None, 0.1, {}), "dropout"
    assert not kernel_fits(q, kv, kv, None, 0.0, {"softcap": 30.0}), "soft-capping"
    assert not kernel_fits(q, kv, kv, torch.zeros(1, 1, 1, 8, dtype=torch.float16, device=DEVICE), 0.0, {}), "an additive mask"
    assert not kernel_fits(q.expand(1, 4, 2, 16), kv, kv, None, 0.0, {}), "two query tokens"


def test_models_not_on_sdpa_keep_their_attention():
    model = tiny_model("llama")
    model.set_attn_implementation("eager")
    assert not use_decode_attention(model)
    assert model.config._attn_implementation == "eager"


def test_fast_decode_switches_the_attention_unless_told_not_to():
    model = tiny_model("llama", dtype=torch.float16)
    enable_fast_decode(model)
    assert model.config._attn_implementation == ATTENTION
    other = tiny_model("llama", dtype=torch.float16)
    enable_fast_decode(other, attention=False)
    assert other.config._attn_implementation == "sdpa"
