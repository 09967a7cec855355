"""The `awqflow` command: quantize a model (a resumable Prefect flow), evaluate a checkpoint, resume
and list runs; `generate` and `chat` (awqflow/generation.py) run a quantized checkpoint.

Errors print one line (what went wrong and what to change); `--debug` shows the traceback and
Prefect's logs. Without `PREFECT_API_URL` the flow runs on a temporary local Prefect server.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from awq_core.config import (
    SUPPORTED_BITS, SUPPORTED_GROUP_SIZES, CalibrationConfig, ClipConfig, GPTQConfig, Method, QuantConfig, Version,
)  # fmt: skip
from awq_core.evaluate import DEFAULT_EVAL_TEXTS, EvalSettings
from awq_core.models import DEFAULT_MODEL, EMBEDDED_MODELS
from flows.dashboard.commands import add_commands as add_dashboard_commands
from awqflow.generation import add_generation_commands

DTYPES = ("float32", "float16", "bfloat16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="awqflow", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    q = commands.add_parser("quantize", help="quantize a causal LM and save an AutoAWQ (or GPTQ) checkpoint")
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
    q.add_argument("--calib", default="auto", help="calibration text: auto (pile-val if the hub answers, else builtin), builtin, a .txt/.jsonl file, or a hub dataset")
    q.add_argument("--n-samples", type=int, default=128)
    q.add_argument("--seqlen", type=int, default=512)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--damp-percent", type=float, default=0.01, help="GPTQ: dampening, a fraction of the Hessian's mean diagonal")
    q.add_argument("--desc-act", action="store_true", help="GPTQ: act-order (columns by decreasing Hessian diagonal)")
    q.add_argument("--static-groups", action="store_true", help="GPTQ: group ranges fixed before any update")
    q.add_argument("--quantized-inputs", action="store_true",
                   help="feed each block the quantized previous block's output (default: the float one)")
    q.add_argument("--config", type=Path, help="a QuantConfig JSON file (overrides the flags above)")
    q.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype the model is loaded and quantized in")
    q.add_argument("--device", default="cpu", help="where each block is quantized (cpu, cuda, cuda:1)")
    q.add_argument("--batch-size", type=int, default=8, help="calibration samples per forward pass")
    q.add_argument("--revision", help="hub revision")
    q.add_argument("--trust-remote-code", action="store_true")
    q.add_argument("--compare", action="store_true", help="also score the float model and RTN on held-out text")
    q.add_argument("--run-dir", type=Path, help="run directory: checkpoints and records (default runs/<model>-<config digest>)")
    q.add_argument("--cache-dir", type=Path, help="where task results are cached (default: .cache next to the run directory)")
    add_eval_flags(q)

    e = commands.add_parser("eval", help="perplexity of a quantized checkpoint on held-out text")
    e.add_argument("checkpoint", type=Path)
    add_eval_flags(e)

    r = commands.add_parser("resume", help="finish an interrupted run (recomputes only what is missing)")
    r.add_argument("run_dir", type=Path)

    ls = commands.add_parser("runs", help="list run directories and their state")
    ls.add_argument("--root", type=Path, default=Path("runs"), help="directory holding the run directories")

    add_dashboard_commands(commands)  # dashboard, report
    add_generation_commands(commands)  # generate, chat: their handlers come with them
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
        gptq=GPTQConfig(damp_percent=args.damp_percent, desc_act=args.desc_act, static_groups=args.static_groups),
    )  # fmt: skip


def print_table(rows: list) -> None:
    texts = list(rows[0].perplexity)
    print(f"{'method':<8}{'bits':>5}{'group':>7}{'quant s':>9}{'size MB':>9}" + "".join(f"{t:>30}" for t in texts))
    for r in rows:
        bits = "16" if r.w_bit is None else str(r.w_bit)
        group = "-" if r.group_size is None else str(r.group_size)
        ppl = "".join(f"{r.perplexity[t]:>30.3f}" for t in texts)
        print(f"{r.method:<8}{bits:>5}{group:>7}{r.quant_seconds:>9.1f}{r.size_bytes / 1e6:>9.1f}{ppl}")


def run_settings(args, config: QuantConfig):
    from flows.records import RunSettings

    settings = eval_settings(args)
    return RunSettings(
        model=args.model, out=str(args.out), config=config, revision=args.revision, dtype=args.dtype,
        trust_remote_code=args.trust_remote_code, device=args.device, batch_size=args.batch_size, eval_texts=list(settings.texts),
        eval_window=settings.window, eval_windows=settings.max_windows,
        cache_dir=str(args.cache_dir) if args.cache_dir else None,
    )  # fmt: skip


def report_row(report: dict):
    from awq_core.compare import MethodResult

    return MethodResult(report["method"], report["w_bit"], report["group_size"], report["seconds"], report["perplexity"], report["size_bytes"], report["out"])


def float_row(settings):
    """The float model's perplexity on the same texts (for --compare)."""
    import torch

    from awq_core.compare import float_result
    from awq_core.evaluate import eval_tokens
    from awq_core.models import load_model

    model, tokenizer = load_model(settings.model, getattr(torch, settings.dtype), settings.revision, settings.trust_remote_code)
    evals = EvalSettings(tuple(settings.eval_texts), settings.eval_window, settings.eval_windows)
    return float_result(model, eval_tokens(tokenizer, evals.texts), evals)


def cmd_quantize(args) -> int:
    from flows.quantize import run_quantize
    from flows.records import default_run_dir

    config = quant_config(args)
    config.hf_quantization_config()  # fails now, not after quantizing, when the layout cannot store the bits
    settings = run_settings(args, config)
    run_dir = args.run_dir or default_run_dir(settings)
    print(f"quantizing {args.model} with {config.method.value.upper()}: run {run_dir}", flush=True)
    rows, fp = [], None
    if args.compare:
        print("scoring the float model", flush=True)
        rows.append(float_row(settings))
        fp = rows[0].perplexity  # recorded in each run's report: its page shows fp vs quantized
        if config.method is not Method.RTN and config.w_bit == 4:  # RTN is saved in the AWQ layout: 4-bit only
            print("quantizing with RTN (baseline)", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                rtn = settings.model_copy(update={"config": config.model_copy(update={"method": Method.RTN}), "out": tmp})
                rows.append(report_row(run_quantize(rtn, Path(run_dir).with_name(Path(run_dir).name + "-rtn"), float_perplexity=fp)))
    rows.append(report_row(run_quantize(settings, run_dir, float_perplexity=fp)))
    print_table(rows)
    print(f"saved {args.out}; per-layer errors: {Path(run_dir) / 'report.html'} (or awqflow dashboard {run_dir})")
    return 0


def cmd_resume(args) -> int:
    from flows.quantize import run_quantize
    from flows.records import read_settings

    settings = read_settings(args.run_dir)
    print(f"resuming {args.run_dir}: {settings.model} -> {settings.out}", flush=True)
    print_table([report_row(run_quantize(settings, args.run_dir))])
    print(f"saved {settings.out}")
    return 0


def cmd_runs(args) -> int:
    from flows.records import list_runs

    runs = list_runs(args.root)
    if not runs:
        print(f"no runs under {args.root}")
    for run_dir, state in runs:
        print(f"{state:<16}{run_dir}")
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


def quiet_prefect() -> None:
    """Prefect logs failures with full tracebacks; without --debug the one-line error says it all."""
    import prefect  # noqa: F401  (configures its loggers)

    for name in [n for n in logging.root.manager.loggerDict if n.startswith("prefect")] + ["prefect"]:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = getattr(args, "handler", None) or {"quantize": cmd_quantize, "eval": cmd_eval, "resume": cmd_resume, "runs": cmd_runs}[args.command]
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # a first start migrates its database
    try:
        if not args.debug and args.command in ("quantize", "resume"):
            quiet_prefect()
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
