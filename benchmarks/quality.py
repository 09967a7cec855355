"""Quantization quality: fp vs RTN vs AWQ vs GPTQ on the embedded models, same held-out tokens for each.

Prints a table (method, bits, group, quantization seconds, perplexity on two held-out texts, size on
disk) and writes benchmarks/results/quality.json with the command that made it. Runs on the CPU:

    python benchmarks/quality.py
    python benchmarks/quality.py --models smollm2-135m --n-samples 16   # quicker
    python benchmarks/quality.py --variants rtn-w4,gptq-w4                # some rows only

RTN at widths other than 4 is scored but not saved (the AutoAWQ layout stores 4-bit weights only and
its zero points do not fit GPTQ's); its size is that of the GPTQ checkpoint of the same width, whose
tensors have the same shapes.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from awq_core.calibration import calibration_blocks
from awq_core.compare import float_result, quantized_result
from awq_core.config import CalibrationConfig, GPTQConfig, Method, QuantConfig
from awq_core.evaluate import DEFAULT_EVAL_TEXTS, EvalSettings, eval_tokens
from awq_core.models import load_model

# Group sizes per model: SmolLM2's hidden size 576 is not a multiple of 128, so it uses 64.
MODELS = {"smollm2-135m": 64, "gemma3-270m": 128}
RESULTS = Path(__file__).parent / "results" / "quality.json"
# name -> (method, bits, GPTQ settings): the rows of the table, in order.
VARIANTS = {
    "rtn-w4": (Method.RTN, 4, {}),
    "awq-w4": (Method.AWQ, 4, {}),
    "gptq-w4": (Method.GPTQ, 4, {}),
    "gptq-w4-act": (Method.GPTQ, 4, {"desc_act": True}),
    "rtn-w3": (Method.RTN, 3, {}),
    "gptq-w3": (Method.GPTQ, 3, {}),
    "rtn-w8": (Method.RTN, 8, {}),
    "gptq-w8": (Method.GPTQ, 8, {}),
}


def run_model(name: str, group_size: int, args) -> list[dict]:
    model, tokenizer = load_model(name, dtype=torch.float32)
    calibration = CalibrationConfig(source="builtin", n_samples=args.n_samples, seqlen=args.seqlen)  # reproducible
    config = QuantConfig(group_size=group_size, calibration=calibration)
    calib = calibration_blocks(tokenizer, calibration)
    settings = EvalSettings(DEFAULT_EVAL_TEXTS, args.eval_window, args.eval_windows)
    tokens = eval_tokens(tokenizer, settings.texts)
    rows = [{"variant": "fp", **float_result(model, tokens, settings).to_dict()}]
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            method, bits, gptq = VARIANTS[variant]
            method_config = config.model_copy(update={"method": method, "w_bit": bits, "gptq": GPTQConfig(**gptq)})
            saved = method is not Method.RTN or bits == 4
            out = Path(tmp) / variant if saved else None
            result = quantized_result(model, tokenizer, method_config, calib, tokens, settings, out)
            rows.append({"variant": variant, **result.to_dict()})
    for row in rows:  # unsaved RTN rows: the size of the GPTQ checkpoint of the same width
        if row["size_bytes"] == 0 and row["variant"] != "fp":
            same = [r["size_bytes"] for r in rows if r["method"] == "gptq" and r["w_bit"] == row["w_bit"]]
            row["size_bytes"] = same[0] if same else None
    return [{"model": name, **row, "checkpoint": None} for row in rows]


def print_table(rows: list[dict]) -> None:
    texts = list(rows[0]["perplexity"])
    header = f"{'model':<14}{'variant':<13}{'bits':>5}{'group':>6}{'quant s':>9}{'size MB':>9}"
    print(header + "".join(f"{t.split(':')[-1]:>20}" for t in texts))
    for r in rows:
        bits = r["w_bit"] or 16
        group = r["group_size"] or "-"
        ppl = "".join(f"{r['perplexity'][t]:>20.3f}" for t in texts)
        size = "-" if r["size_bytes"] is None else f"{r['size_bytes'] / 1e6:.1f}"
        print(f"{r['model']:<14}{r.get('variant', r['method']):<13}{bits:>5}{group:>6}{r['quant_seconds']:>9.1f}{size:>9}{ppl}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {list(MODELS)}")
    parser.add_argument("--n-samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-window", type=int, default=1024)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    rows = []
    for name in args.models.split(","):
        rows.extend(run_model(name, MODELS[name], args))
        print_table(rows)
        write_report(args, rows, time.perf_counter() - start)  # after each model: a long run keeps what it measured
    print(f"wrote {args.out}")
    return 0


def write_report(args, rows: list[dict], seconds: float) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": {"cpu_count": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
        "calibration": {"source": "builtin", "n_samples": args.n_samples, "seqlen": args.seqlen},
        "eval": {"texts": list(DEFAULT_EVAL_TEXTS), "window": args.eval_window, "max_windows": args.eval_windows},
        "seconds": seconds,
        "rows": rows,
    }
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    sys.exit(main())
