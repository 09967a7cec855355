"""The `awqflow` command: quantize a model, evaluate a checkpoint.

Errors print one line (what went wrong and what to change); `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from awq_core.config import SUPPORTED_BITS, SUPPORTED_GROUP_SIZES, CalibrationConfig, ClipConfig, Method, QuantConfig, Version
from awq_core.evaluate import DEFAULT_EVAL_TEXTS, EvalSettings
from awq_core.models import DEFAULT_MODEL, EMBEDDED_MODELS

DTYPES = ("float32", "float16", "bfloat16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="awqflow", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    q = commands.add_parser("quantize", help="quantize a causal LM and save an AutoAWQ checkpoint")
    q.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"hub id, local directory, .gguf file, or an embedded model: {', '.join(EMBEDDED_MODELS)}")
    q.add_argument("--out", required=True, type=Path, help="directory for the quantized checkpoint")
    q.add_argument("--method", choices=[m.value for m in Method], default=Method.AWQ.value)
    q.add_argument("--w-bit", type=int, choices=SUPPORTED_BITS, default=4)
    q.add_argument("--group-size", type=int, choices=SUPPORTED_GROUP_SIZES, default=128)
    q.add_argument("--no-zero-point", action="store_true", help="symmetric quantization")
    q.add_argument("--version", choices=[v.value for v in Version], default=Version.GEMM.value)
    q.add_argument("--n-grid", type=int, default=20, help="points of the scale-ratio grid")
    q.add_argument("--no-clip", action="store_true", help="skip the clip search")
    q.add_argument("--calib", default="builtin", help="calibration text: builtin, a .txt/.jsonl file, or a hub dataset")
    q.add_argument("--n-samples", type=int, default=128)
    q.add_argument("--seqlen", type=int, default=512)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--quantized-inputs", action="store_true",
                   help="feed each block the quantized previous block's output (default: the float one)")
    q.add_argument("--config", type=Path, help="a QuantConfig JSON file (overrides the flags above)")
    q.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype the model is loaded and quantized in")
    q.add_argument("--device", default="cpu", help="where each block is quantized (cpu, cuda, cuda:1)")
    q.add_argument("--revision", help="hub revision")
    q.add_argument("--trust-remote-code", action="store_true")
    q.add_argument("--compare", action="store_true", help="also score the float model and RTN on held-out text")
    add_eval_flags(q)

    e = commands.add_parser("eval", help="perplexity of a quantized checkpoint on held-out text")
    e.add_argument("checkpoint", type=Path)
    add_eval_flags(e)
    return parser


def add_eval_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval-text", action="append", help=f"text to score (repeatable; default {list(DEFAULT_EVAL_TEXTS)})")
    parser.add_argument("--eval-windows", type=int, help="score at most this many windows per text")
    parser.add_argument("--eval-window", type=int, help="window length in tokens (default: context, at most 2048)")


def eval_settings(args) -> EvalSettings:
    return EvalSettings(tuple(args.eval_text or DEFAULT_EVAL_TEXTS), args.eval_window, args.eval_windows)


def quant_config(args) -> QuantConfig:
    if args.config:
        return QuantConfig.from_json(args.config.read_text())
    return QuantConfig(
        method=args.method, w_bit=args.w_bit, group_size=args.group_size, zero_point=not args.no_zero_point,
        version=args.version, n_grid=args.n_grid, clip=ClipConfig(enabled=not args.no_clip),
        calibration=CalibrationConfig(source=args.calib, n_samples=args.n_samples, seqlen=args.seqlen, seed=args.seed),
        sequential_quantized_inputs=args.quantized_inputs,
    )  # fmt: skip


def print_table(rows: list) -> None:
    texts = list(rows[0].perplexity)
    print(f"{'method':<8}{'bits':>5}{'group':>7}{'quant s':>9}{'size MB':>9}" + "".join(f"{t:>30}" for t in texts))
    for r in rows:
        bits = "16" if r.w_bit is None else str(r.w_bit)
        group = "-" if r.group_size is None else str(r.group_size)
        ppl = "".join(f"{r.perplexity[t]:>30.3f}" for t in texts)
        print(f"{r.method:<8}{bits:>5}{group:>7}{r.quant_seconds:>9.1f}{r.size_bytes / 1e6:>9.1f}{ppl}")


def cmd_quantize(args) -> int:
    import torch

    from awq_core.awq import check_model
    from awq_core.calibration import calibration_blocks
    from awq_core.compare import float_result, quantized_result
    from awq_core.evaluate import eval_tokens
    from awq_core.models import load_model

    config = quant_config(args)
    if config.w_bit != 4:
        raise ValueError(f"--w-bit {config.w_bit}: the AutoAWQ checkpoint layout stores 4-bit weights; use --w-bit 4")
    print(f"loading {args.model}", flush=True)
    model, tokenizer = load_model(args.model, getattr(torch, args.dtype), args.revision, args.trust_remote_code)
    check_model(model, config)
    calib = calibration_blocks(tokenizer, config.calibration)
    print(f"calibration: {calib.shape[0]} x {calib.shape[1]} tokens from {config.calibration.source}", flush=True)
    settings = eval_settings(args)
    tokens = eval_tokens(tokenizer, settings.texts)

    def progress(block) -> None:
        print(f"  block {block.index:>3}  {block.seconds:6.1f} s", flush=True)

    rows = []
    if args.compare:
        print("scoring the float model", flush=True)
        rows.append(float_result(model, tokens, settings))
        if config.method is Method.AWQ:
            print("quantizing with RTN (baseline)", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                rtn = config.model_copy(update={"method": Method.RTN})
                rows.append(quantized_result(model, tokenizer, rtn, calib, tokens, settings, Path(tmp), args.device))
    print(f"quantizing with {config.method.value.upper()}", flush=True)
    result = quantized_result(model, tokenizer, config, calib, tokens, settings, args.out, args.device, progress)
    rows.append(result)
    (args.out / "awqflow_config.json").write_text(config.to_json())
    with open(args.out / "awqflow_layers.jsonl", "w") as f:
        for row in result.layer_metrics:
            f.write(json.dumps(row) + "\n")
    print_table(rows)
    print(f"saved {args.out}")
    return 0


def cmd_eval(args) -> int:
    from awq_core.checkpoint import load_quantized
    from awq_core.compare import MethodResult, weights_size_on_disk
    from awq_core.evaluate import eval_tokens, evaluate
    from transformers import AutoTokenizer

    import torch

    model = load_quantized(args.checkpoint, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    settings = eval_settings(args)
    ppl = evaluate(model, eval_tokens(tokenizer, settings.texts), settings)
    q = model.config.quantization_config
    print_table([MethodResult("ckpt", q.get("bits"), q.get("group_size"), 0.0, ppl, weights_size_on_disk(args.checkpoint))])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"quantize": cmd_quantize, "eval": cmd_eval}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("awqflow: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line for users; --debug for the traceback
        if args.debug:
            raise
        message = str(e).strip().splitlines()
        print(f"awqflow: error: {type(e).__name__}: {' '.join(message) if message else ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
