"""generate() on a real model: SmolLM2-135M-Instruct (the embedded GGUF), RTN g64 packed in WQLinear."""
import pytest
import torch

from awq_core.checkpoint import replace_linears
from awq_core.fused_linear import fuse_linears
from awq_core.models import load_model
from quantized_tiny import fake_quantized, quantize_all

pytestmark = pytest.mark.slow
NEW = 16  # the CPU reference path unpacks every weight at every step: minutes on a shared CPU


@pytest.fixture(scope="module")
def smollm2_pair():
    model, tokenizer = load_model("smollm2-135m", dtype=torch.float32)
    quantized = quantize_all(model, group_size=64)  # hidden 576 is not a multiple of 128
    reference = fake_quantized(model, quantized)
    return replace_linears(model, quantized, "gemm").eval(), reference, tokenizer


def test_greedy_chat_equals_the_fake_quantized_models(smollm2_pair):
    model, reference, tokenizer = smollm2_pair
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    greedy = dict(max_new_tokens=NEW, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    expected = reference.generate(**inputs, **greedy)
    fuse_linears(model)
    tokens = model.generate(**inputs, **greedy)
    assert torch.equal(tokens, expected)
    answer = tokenizer.decode(tokens[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"\nSmolLM2-135M W4 g64: {answer!r}")
    assert answer.strip(), "the quantized model answers"
    torch.manual_seed(0)
    sampled = model.generate(**inputs, max_new_tokens=NEW, do_sample=True, temperature=0.8, top_k=40, top_p=0.9,
                             repetition_penalty=1.1, pad_token_id=tokenizer.eos_token_id)  # fmt: skip
    assert inputs["input_ids"].shape[1] < sampled.shape[1] <= inputs["input_ids"].shape[1] + NEW
