"""Quantization quality: fp vs RTN vs AWQ on the embedded models, same held-out tokens for each.

Prints a table (method, bits, group, quantization seconds, perplexity on two held-out texts, size on
disk) and writes benchmarks/results/quality.json with the command that made it. Runs on the CPU:

    python benchmarks/quality.py
    python benchmarks/quality.py --models smollm2-135m --n-samples 16   # quicker
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
from awq_core.config import CalibrationConfig, Method, QuantConfig
from awq_core.evaluate import DEFAULT_EVAL_TEXTS, EvalSettings, eval_tokens
from awq_core.models import load_model

# Group sizes per model: SmolLM2's hidden size 576 is not a multiple of 128, so it uses 64.
MODELS = {"smollm2-135m": 64, "gemma3-270m": 128}
RESULTS = Path(__file__).parent / "results" / "quality.json"


def run_model(name: str, group_size: int, args) -> list[dict]:
    model, tokenizer = load_model(name, dtype=torch.float32)
    calibration = CalibrationConfig(source="builtin", n_samples=args.n_samples, seqlen=args.seqlen)  # reproducible
    config = QuantConfig(group_size=group_size, calibration=calibration)
    calib = calibration_blocks(tokenizer, calibration)
    settings = EvalSettings(DEFAULT_EVAL_TEXTS, args.eval_window, args.eval_windows)
    tokens = eval_tokens(tokenizer, settings.texts)
    rows = [float_result(model, tokens, settings)]
    with tempfile.TemporaryDirectory() as tmp:
        for method in (Method.RTN, Method.AWQ):
            method_config = config.model_copy(update={"method": method})
            rows.append(quantized_result(model, tokenizer, method_config, calib, tokens, settings, Path(tmp) / method.value))
    return [{"model": name, **row.to_dict(), "checkpoint": None} for row in rows]


def print_table(rows: list[dict]) -> None:
    texts = list(rows[0]["perplexity"])
    header = f"{'model':<14}{'method':<7}{'bits':>5}{'group':>6}{'quant s':>9}{'size MB':>9}"
    print(header + "".join(f"{t.split(':')[-1]:>20}" for t in texts))
    for r in rows:
        bits = r["w_bit"] or 16
        group = r["group_size"] or "-"
        ppl = "".join(f"{r['perplexity'][t]:>20.3f}" for t in texts)
        print(f"{r['model']:<14}{r['method']:<7}{bits:>5}{group:>6}{r['quant_seconds']:>9.1f}{r['size_bytes'] / 1e6:>9.1f}{ppl}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {list(MODELS)}")
    parser.add_argument("--n-samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-window", type=int, default=1024)
    parser.add_argument("--eval-windows", type=int, default=8)
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
