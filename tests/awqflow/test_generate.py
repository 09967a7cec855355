"""generate() on quantized models: every sampling mode, with the KV cache, pipelines and chat templates."""
import pytest
import torch
from transformers import pipeline

from awq_core.fused_linear import fuse_linears
from quantized_tiny import quantized_pair
from tiny_models import tiny_tokenizer

NEW = 16
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def prompt(batch=2, length=8, seed=0):
    return torch.randint(2, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def generate(model, input_ids, seed=None, **kwargs):
    if seed is not None:
        torch.manual_seed(seed)
    return model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=NEW, min_new_tokens=NEW,
        pad_token_id=0, **kwargs,
    )[:, input_ids.shape[1]:]  # fmt: skip


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3_text"])
def test_greedy_equals_the_fake_quantized_models_greedy(kind):
    model, reference = quantized_pair(kind)
    x = prompt()
    expected = generate(reference, x, do_sample=False)
    assert torch.equal(generate(model, x, do_sample=False), expected)
    assert torch.equal(generate(model, x, do_sample=False, use_cache=False), expected), "the KV cache changes nothing"
    fuse_linears(model)
    assert torch.equal(generate(model, x, do_sample=False), expected)


def test_sampling_modes():
    model, reference = quantized_pair("llama")
    fuse_linears(model)
    x = prompt()
    greedy = generate(model, x, do_sample=False)
    assert greedy.shape == (2, NEW)
    # Sampling that can only pick the top token is greedy.
    assert torch.equal(generate(model, x, seed=1, do_sample=True, top_k=1), greedy)
    assert torch.equal(generate(model, x, seed=1, do_sample=True, top_p=1e-6, top_k=0), greedy)
    # Seeded sampling repeats itself and matches the fake-quantized model's (the logits are equal).
    for mode in (dict(temperature=0.7), dict(top_k=10), dict(top_p=0.9), dict(temperature=1.3, top_k=20, top_p=0.95)):
        sampled = generate(model, x, seed=2, do_sample=True, **mode)
        assert sampled.shape == (2, NEW), mode
        assert torch.equal(generate(model, x, seed=2, do_sample=True, **mode), sampled), mode
        assert torch.equal(generate(reference, x, seed=2, do_sample=True, **mode), sampled), mode
    assert not torch.equal(generate(model, x, seed=2, do_sample=True, temperature=1.5), greedy), "sampling samples"


def test_repetition_penalty_changes_a_repetitive_greedy_output():
    model, reference = quantized_pair("llama")
    x = prompt(1)
    greedy = generate(model, x, do_sample=False)
    penalized = generate(model, x, do_sample=False, repetition_penalty=5.0)
    assert torch.equal(generate(reference, x, do_sample=False, repetition_penalty=5.0), penalized)
    assert penalized.unique().numel() > greedy.unique().numel(), (greedy, penalized)


def test_text_generation_pipeline_and_chat_template():
    model, _ = quantized_pair("llama")
    fuse_linears(model)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
    text = "the model reads"
    [result] = generator(text, max_new_tokens=NEW, do_sample=False)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    expected = tokenizer.decode(model.generate(ids, max_new_tokens=NEW, do_sample=False)[0])
    assert result["generated_text"] == expected and result["generated_text"].startswith(text)

    messages = [{"role": "user", "content": "hello"}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == "<user>hello\n<assistant>"
    chat_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**chat_ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    assert out.shape == (1, chat_ids["input_ids"].shape[1] + NEW)
    [chat] = generator(messages, max_new_tokens=NEW, do_sample=False)
    assert chat["generated_text"][:-1] == messages and chat["generated_text"][-1]["role"] == "assistant"
