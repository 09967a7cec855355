import io

import pytest
import torch
from transformers import AutoTokenizer

from awq_core.checkpoint import save_quantized
from awq_core.config import QuantConfig
from awqflow import AutoQuantForCausalLM
from awqflow.cli import main
from quantized_tiny import GROUP, quantized_pair
from tiny_models import tiny_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def save_checkpoint(directory, chat_template=None):
    model, _ = quantized_pair("llama")
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = chat_template
    save_quantized(model, directory, QuantConfig(group_size=GROUP).hf_quantization_config(), tokenizer=tokenizer)
    return directory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "chat", CHAT_TEMPLATE)


def expected_greedy(checkpoint, input_ids, n):
    model = AutoQuantForCausalLM.from_quantized(checkpoint, dtype=torch.float32, fuse_layers=True)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=n, do_sample=False,
                         pad_token_id=tokenizer.eos_token_id)  # fmt: skip
    return tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)


def test_generate_prints_the_greedy_continuation(checkpoint, capsys):
    assert main(["generate", str(checkpoint), "the model reads", "--max-new-tokens", "8"]) == 0
    printed = capsys.readouterr().out
    ids = AutoTokenizer.from_pretrained(checkpoint)("the model reads", return_tensors="pt")["input_ids"]
    assert printed == expected_greedy(checkpoint, ids, 8) + "\n"


def test_generate_with_sampling_flags_and_chat(checkpoint, capsys):
    args = ["generate", str(checkpoint), "hello", "--max-new-tokens", "5", "--temperature", "0.8", "--top-k", "20",
            "--top-p", "0.9", "--repetition-penalty", "1.2", "--seed", "3", "--chat", "--kernel", "torch"]  # fmt: skip
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first, "the same seed samples the same text"
    assert main(["generate", str(checkpoint), "hello", "--temperature", "-1"]) == 1
    assert "--temperature -1.0 is out of range" in capsys.readouterr().err


def test_chat_reads_turns_from_stdin(checkpoint, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello there\n/reset\nand again\n/exit\nnever read\n"))
    assert main(["chat", str(checkpoint), "--max-new-tokens", "4", "--system", "be brief"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("> ") == 4  # a prompt before each of the three lines read, and after the last turn
    assert "(conversation cleared)" in printed
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "and again"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert expected_greedy(checkpoint, ids["input_ids"], 4) in printed


def test_chat_without_a_template_says_what_to_do(tmp_path, capsys, monkeypatch):
    plain = save_checkpoint(tmp_path / "plain")
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    assert main(["chat", str(plain)]) == 1
    assert "--chat-template FILE" in capsys.readouterr().err
    (tmp_path / "template.jinja").write_text(CHAT_TEMPLATE)
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    assert main(["chat", str(plain), "--chat-template", str(tmp_path / "template.jinja"), "--max-new-tokens", "3"]) == 0
