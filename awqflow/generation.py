"""`awqflow generate DIR "prompt"` and `awqflow chat DIR`: text from a quantized checkpoint.

Both load the checkpoint with `AutoQuantForCausalLM.from_quantized` (fused layers; static cache and
CUDA graphs on a GPU) and call transformers' `generate()`, streaming the new tokens to stdout.
Temperature 0 (the default) decodes greedily; a positive temperature, --top-k or --top-p samples.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable, TextIO

EXIT_COMMANDS = ("/exit", "/quit")
RESET_COMMAND = "/reset"


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="directory of a quantized checkpoint")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy decoding")
    parser.add_argument("--top-k", type=int, help="sample from the k most likely tokens")
    parser.add_argument("--top-p", type=float, help="sample from the smallest set of tokens with this much probability")
    parser.add_argument("--repetition-penalty", type=float, help="> 1 discourages repeating tokens")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    parser.add_argument("--kernel", choices=("auto", "gemv", "gemm", "torch"), default="auto")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1")
    parser.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                        help="activation dtype (auto: float16 on a GPU, float32 on the CPU)")
    parser.add_argument("--no-fuse", action="store_true", help="keep q/k/v and gate/up as separate layers")
    parser.add_argument("--compile", action="store_true",
                        help="on CUDA, decode with the torch.compile'd step (faster per token; compiles first)")
    parser.add_argument("--chat-template", type=Path, help="a Jinja chat template file, for tokenizers without one")


def add_generation_commands(commands) -> None:
    g = commands.add_parser("generate", help="generate text from a quantized checkpoint")
    add_generation_flags(g)
    g.add_argument("prompt")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    g.set_defaults(handler=cmd_generate)

    c = commands.add_parser("chat", help="chat with a quantized checkpoint (reads stdin; /reset, /exit)")
    add_generation_flags(c)
    c.add_argument("--system", help="a system message opening the conversation")
    c.set_defaults(handler=cmd_chat)


def sampling_kwargs(args) -> dict:
    """generate() arguments of the flags: greedy unless a temperature, top-k or top-p asks for sampling."""
    for name, value, ok in (
        ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1),
        ("--temperature", args.temperature, args.temperature >= 0),
        ("--top-k", args.top_k, args.top_k is None or args.top_k >= 1),
        ("--top-p", args.top_p, args.top_p is None or 0 < args.top_p <= 1),
        ("--repetition-penalty", args.repetition_penalty, args.repetition_penalty is None or args.repetition_penalty > 0),
    ):
        if not ok:
            raise ValueError(f"{name} {value} is out of range; see `awqflow {args.command} --help`")
    sample = args.temperature > 0 or args.top_k is not None or args.top_p is not None
    kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=sample)
    if sample:
        kwargs.update(temperature=args.temperature or 1.0, top_k=args.top_k or 0, top_p=args.top_p or 1.0)
    if args.repetition_penalty is not None:
        kwargs["repetition_penalty"] = args.repetition_penalty
    return kwargs


def load(args):
    """(model, tokenizer) of the checkpoint, set up for generation on the requested device."""
    import torch
    from transformers import AutoTokenizer

    from awqflow.api import AutoQuantForCausalLM

    on_gpu = str(args.device).startswith("cuda")
    dtype = (torch.float16 if on_gpu else torch.float32) if args.dtype == "auto" else getattr(torch, args.dtype)
    model = AutoQuantForCausalLM.from_quantized(
        args.checkpoint, device=args.device, kernel=args.kernel, dtype=dtype,
        fuse_layers=not args.no_fuse, fast_decode=("compile" if args.compile else "graphs") if on_gpu else False,
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    if args.chat_template:
        tokenizer.chat_template = args.chat_template.read_text()
    if model.generation_config.pad_token_id is None and tokenizer.eos_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.eos_token_id  # no "pad token not set" warning per call
    return model, tokenizer


def check_chat_template(tokenizer, checkpoint: Path) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the tokenizer in {checkpoint} has no chat template: pass --chat-template FILE (a Jinja template), "
            f"or use `awqflow generate` without --chat"
        )


def generate_text(model, tokenizer, input_ids, kwargs: dict, out: TextIO) -> str:
    """Generate after `input_ids` (1, tokens), streaming the new text to `out`; returns the new text."""
    import torch
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

    input_ids = input_ids.to(model.device)
    with torch.no_grad():
        tokens = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            streamer=Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True), **kwargs,
        )  # fmt: skip
    return tokenizer.decode(tokens[0, input_ids.shape[1] :], skip_special_tokens=True)


def chat_ids(tokenizer, messages: list[dict]):
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return ids["input_ids"]  # (1, tokens)


def cmd_generate(args) -> int:
    import torch

    kwargs = sampling_kwargs(args)
    model, tokenizer = load(args)
    torch.manual_seed(args.seed)
    if args.chat:
        check_chat_template(tokenizer, args.checkpoint)
        input_ids = chat_ids(tokenizer, [{"role": "user", "content": args.prompt}])
    else:
        input_ids = tokenizer(args.prompt, return_tensors="pt")["input_ids"]
    generate_text(model, tokenizer, input_ids, kwargs, sys.stdout)
    return 0


def chat_loop(model, tokenizer, lines: Iterable[str], out: TextIO, kwargs: dict, system: str | None = None) -> list[dict]:
    """The REPL: each line is a user turn, answered with the whole conversation as context. Returns it."""
    opening = [{"role": "system", "content": system}] if system else []
    messages = list(opening)
    out.write("> ")
    out.flush()
    for line in lines:
        text = line.strip()
        if text in EXIT_COMMANDS:
            break
        if text == RESET_COMMAND:
            messages = list(opening)
            out.write("(conversation cleared)\n")
        elif text:
            messages.append({"role": "user", "content": text})
            reply = generate_text(model, tokenizer, chat_ids(tokenizer, messages), kwargs, out)
            messages.append({"role": "assistant", "content": reply})
        out.write("> ")
        out.flush()
    out.write("\n")
    return messages


def cmd_chat(args) -> int:
    import torch

    kwargs = sampling_kwargs(args)
    model, tokenizer = load(args)
    check_chat_template(tokenizer, args.checkpoint)
    torch.manual_seed(args.seed)
    print(f"chatting with {args.checkpoint}: {RESET_COMMAND} clears the conversation, {EXIT_COMMANDS[0]} or Ctrl-D ends it")
    chat_loop(model, tokenizer, sys.stdin, sys.stdout, kwargs, args.system)
    return 0
