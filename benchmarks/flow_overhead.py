"""What the resumable flow costs over calling awq_core directly, on the same model and config.

    python benchmarks/flow_overhead.py   # writes benchmarks/results/flow_overhead.json

1. direct: load the model, `awq_core.awq.quantize_model`, `replace_linears`, `save_quantized`, in process;
2. flow: the `awqflow quantize` command in a fresh process with a fresh run directory (imports, the
   temporary Prefect server, every checkpoint written and hashed), wall time;
3. the same command again: everything comes from the cache.
The flow's `validate` stage (perplexity on held-out text) has no direct counterpart: it is reported
and subtracted.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from awq_core.awq import quantize_model
from awq_core.calibration import calibration_blocks
from awq_core.checkpoint import replace_linears, save_quantized
from awq_core.config import CalibrationConfig, QuantConfig
from awq_core.models import load_model

MODEL = "smollm2-135m"
CONFIG = QuantConfig(group_size=64, calibration=CalibrationConfig(n_samples=16, seqlen=256))
RESULT = Path(__file__).parent / "results" / "flow_overhead.json"


def direct(out: Path) -> float:
    start = time.perf_counter()
    model, tokenizer = load_model(MODEL)
    result = quantize_model(model, calibration_blocks(tokenizer, CONFIG.calibration), CONFIG)
    replace_linears(model, result.quantized, CONFIG.version)
    save_quantized(model, out, CONFIG.hf_quantization_config(), tokenizer=tokenizer)
    return time.perf_counter() - start


def flow_command(out: Path, run_dir: Path) -> list[str]:
    return ["awqflow", "quantize", MODEL, "--out", str(out), "--group-size", "64", "--n-samples", "16",
            "--seqlen", "256", "--eval-windows", "4", "--run-dir", str(run_dir)]  # fmt: skip


def timed_command(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_LOGGING_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}  # fmt: skip
        load_before = os.getloadavg()
        direct_s = direct(tmp / "direct")
        print(f"direct: {direct_s:.1f} s", flush=True)
        run_dir = tmp / "runs" / "smollm2"
        command = flow_command(tmp / "flow", run_dir)
        flow_s = timed_command(command, env)
        print(f"flow: {flow_s:.1f} s", flush=True)
        stages = json.loads((run_dir / "report.json").read_text())["stages"]
        run_bytes = sum(f.stat().st_size for f in run_dir.rglob("*") if f.is_file())
        cached_s = timed_command(command, env)
        load_after = os.getloadavg()
        identical = (tmp / "flow" / "model.safetensors").read_bytes() == (tmp / "direct" / "model.safetensors").read_bytes()
    validate_s = stages["validate"]["seconds"]
    result = {
        "command": "python benchmarks/flow_overhead.py",
        "flow_command": " ".join(flow_command(Path("OUT"), Path("RUN_DIR"))),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "load_average_1_5_15_min_before_after": [load_before, load_after]},  # fmt: skip
        "model": MODEL,
        "config": CONFIG.model_dump(mode="json"),
        "direct_seconds": round(direct_s, 1),
        "flow_wall_seconds": round(flow_s, 1),
        "flow_validate_seconds": round(validate_s, 1),
        "flow_overhead_seconds": round(flow_s - validate_s - direct_s, 1),
        "flow_overhead_fraction": round((flow_s - validate_s - direct_s) / direct_s, 3),
        "flow_stage_seconds": {k: v["seconds"] for k, v in stages.items()},
        "cached_rerun_wall_seconds": round(cached_s, 1),
        "run_dir_bytes": run_bytes,
        "checkpoint_identical_to_direct": identical,
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
