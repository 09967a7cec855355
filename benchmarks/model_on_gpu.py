"""Whole-model check on a CUDA GPU: the Triton kernels inside `WQLinear` against its torch reference path.

    python benchmarks/model_on_gpu.py [--out DIR]   # -> benchmarks/results/model_on_gpu_<gpu>.json

A Llama-shaped random model (transformers' LlamaConfig) is RTN-quantized with awq_core (group 128),
its linears are swapped for packed `WQLinear`s, and the fp16 model runs on the GPU twice: with
`set_kernel(model, "torch")` (dequantize + F.linear) and with the kernels ("auto": GEMV / GEMM /
dequant+cuBLAS by M; forced "gemm" for perplexity at M=512 too). Checks, exit status 1 if any fails:

- batch 1: greedy decoding of 32 tokens (own loop with a KV cache: prefill M = prompt length, then
  M = 1 per step) gives identical tokens. The unquantized lm_head computes its logits in float32 in
  both runs: fp16 logits tie exactly often enough to make greedy decoding a coin toss between two
  equally right paths;
- batch 4: the kernels and cuBLAS sum in different orders, so where two sequences' best logits lie
  closer than that rounding, greedy decoding may legitimately part ways. The check is therefore
  teacher-forced: both paths decode step by step (M = 4 per step, the same kernels as free decoding)
  on the torch path's greedy tokens, and the logits of every step must agree within LOGIT_RTOL
  (||kernels - torch|| / ||torch||). Greedy agreement and the smallest top-1 / top-2 gap are reported;
- perplexity (awq_core.perplexity) on a fixed token stream agrees within 0.1%, at windows of 64
  (GEMM) and 512 (dequant+cuBLAS), also for a copy packed in the AutoAWQ GEMV layout.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

from awq_core.awq import quantize_model  # noqa: E402
from awq_core.checkpoint import replace_linears  # noqa: E402
from awq_core.config import QuantConfig  # noqa: E402
from awq_core.perplexity import perplexity  # noqa: E402
from awq_core.qlinear import WQLinear, set_kernel  # noqa: E402
from triton_kernels.configs import gpu_file_name  # noqa: E402

MODEL = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16,
             num_key_value_heads=16, vocab_size=4096, max_position_embeddings=2048)
NEW_TOKENS = 32
PPL_RTOL = 1e-3  # perplexities must agree within 0.1%
LOGIT_RTOL = 1e-2  # teacher-forced logits, per step: ||kernels - torch|| / ||torch|| (fp16 activations)
STREAM_TOKENS = 4096


class Float32Head(torch.nn.Module):
    """An lm_head that returns float32 logits: no fp16 ties between the top two tokens."""

    def __init__(self, head: torch.nn.Linear):
        super().__init__()
        self.weight = torch.nn.Parameter(head.weight.detach().float(), requires_grad=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(h.float(), self.weight)


def build_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(LlamaConfig(**MODEL), dtype=torch.float32).eval()


def token_stream(n: int, vocab: int, seed: int = 1) -> torch.Tensor:
    """Half random ids, half a repeating ramp: a fixed stream with some structure."""
    gen = torch.Generator().manual_seed(seed)
    rand = torch.randint(0, vocab, (n // 2,), generator=gen)
    ramp = (torch.arange(n - n // 2) * 7) % vocab
    return torch.cat([rand, ramp])  # (n,)


@torch.no_grad()
def greedy(model, prompt: torch.Tensor, steps: int) -> tuple[torch.Tensor, float]:
    """(batch, steps) greedy tokens and the smallest top-1 / top-2 logit gap met on the way."""
    out = model(input_ids=prompt, use_cache=True)
    tokens, gap = [], float("inf")
    for _ in range(steps):
        top = out.logits[:, -1].float().topk(2, dim=-1)  # (batch, 2)
        gap = min(gap, float((top.values[:, 0] - top.values[:, 1]).min()))
        nxt = top.indices[:, :1]  # (batch, 1)
        tokens.append(nxt)
        out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
    return torch.cat(tokens, dim=1).cpu(), gap


@torch.no_grad()
def teacher_forced(model, prompt: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(batch, steps, vocab) float32 logits of decoding `tokens` (batch, steps) step by step after `prompt`."""
    out = model(input_ids=prompt, use_cache=True)
    logits = [out.logits[:, -1].float()]
    for step in range(tokens.shape[1] - 1):
        out = model(input_ids=tokens[:, step : step + 1], past_key_values=out.past_key_values, use_cache=True)
        logits.append(out.logits[:, -1].float())
    return torch.stack(logits, dim=1)


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    torch.cuda.synchronize()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="also copy the result file here")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this check needs a CUDA GPU"
    device = torch.device("cuda")

    model = build_model()
    calib = torch.randint(0, MODEL["vocab_size"], (8, 128), generator=torch.Generator().manual_seed(2))
    config = QuantConfig(method="rtn", group_size=128)
    result, quant_s = timed(lambda: quantize_model(model, calib, config, device=device))
    gemv_model = copy.deepcopy(model)
    replace_linears(model, result.quantized, "gemm")
    replace_linears(gemv_model, result.quantized, "gemv")
    model, gemv_model = model.half().to(device), gemv_model.half().to(device)
    for m in (model, gemv_model):
        m.lm_head = Float32Head(m.lm_head)
    n_layers = sum(isinstance(m, WQLinear) for m in model.modules())
    print(f"quantized {n_layers} linears in {quant_s:.1f} s", flush=True)

    checks, ok = [], True
    for batch in (1, 4):
        prompt = torch.randint(0, MODEL["vocab_size"], (batch, 16), generator=torch.Generator().manual_seed(3 + batch))
        prompt = prompt.to(device)
        runs = {}
        for kernel in ("torch", "auto"):
            set_kernel(model, kernel)
            greedy(model, prompt, 2)  # warm-up: Triton compiles outside the timing
            (tokens, gap), seconds = timed(lambda: greedy(model, prompt, NEW_TOKENS))
            runs[kernel] = dict(tokens=tokens, gap=gap, ms_per_token=1000 * seconds / NEW_TOKENS)
        same = torch.equal(runs["auto"]["tokens"], runs["torch"]["tokens"])
        first = None if same else int((runs["auto"]["tokens"] != runs["torch"]["tokens"]).any(0).nonzero()[0])
        row = dict(batch=batch, kernel="auto", identical=same, first_differing_step=first,
                   min_top2_gap=min(runs["auto"]["gap"], runs["torch"]["gap"]),
                   ms_per_token=runs["auto"]["ms_per_token"], torch_ms_per_token=runs["torch"]["ms_per_token"],
                   tokens=runs["auto"]["tokens"][0].tolist())
        if batch == 1:
            ok &= same
            checks.append(dict(check="greedy", **row))
        else:
            forced = runs["torch"]["tokens"].to(device)
            logits = {}
            for kernel in ("torch", "auto"):
                set_kernel(model, kernel)
                logits[kernel] = teacher_forced(model, prompt, forced)  # (batch, steps, vocab)
            diff = logits["auto"] - logits["torch"]  # (batch, steps, vocab)
            step_err = torch.linalg.norm(diff, dim=-1) / torch.linalg.norm(logits["torch"], dim=-1)  # (batch, steps)
            row.update(max_logit_rel_error=float(step_err.max()), max_logit_abs_diff=float(diff.abs().max()))
            passed = row["max_logit_rel_error"] < LOGIT_RTOL
            ok &= passed
            checks.append(dict(check="teacher_forced_logits", ok=passed, rtol=LOGIT_RTOL, **row))
        print(f"greedy batch={batch}: identical={same} first differing step {first} (min top-2 gap "
              f"{row['min_top2_gap']:.2e}) {row['ms_per_token']:.2f} ms/token vs torch {row['torch_ms_per_token']:.2f}"
              + (f"; teacher-forced logits max rel error {row['max_logit_rel_error']:.2e}, max abs diff "
                 f"{row['max_logit_abs_diff']:.2e}" if batch > 1 else ""), flush=True)

    stream = token_stream(STREAM_TOKENS, MODEL["vocab_size"])
    for name, m in (("gemm-layout", model), ("gemv-layout", gemv_model)):
        for window, kernel in ((64, "auto"), (512, "auto"), (512, "gemm")):
            ppl = {}
            for mode in ("torch", kernel):
                set_kernel(m, mode)
                ppl[mode] = perplexity(m, stream, window=window)
            rel = abs(ppl[kernel] - ppl["torch"]) / ppl["torch"]
            ok &= rel < PPL_RTOL
            checks.append(dict(check="perplexity", model=name, window=window, kernel=kernel, torch=ppl["torch"],
                               kernels=ppl[kernel], relative_difference=rel, ok=rel < PPL_RTOL))
            print(f"perplexity {name} window={window} {kernel}: torch {ppl['torch']:.4f} kernels "
                  f"{ppl[kernel]:.4f} (rel diff {rel:.2e})", flush=True)

    gpu = torch.cuda.get_device_name(0)
    path = Path(__file__).resolve().parent / "results" / f"model_on_gpu_{gpu_file_name(gpu)}"
    data = dict(gpu=gpu, command="python " + " ".join(sys.argv), torch=torch.__version__,
                triton=__import__("triton").__version__, model=MODEL, quant="rtn, group 128, fp16",
                new_tokens=NEW_TOKENS, ppl_rtol=PPL_RTOL, passed=bool(ok), checks=checks)
    path.write_text(json.dumps(data, indent=1) + "\n")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / path.name).write_text(path.read_text())
    print("PASSED" if ok else "FAILED", "->", path)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
