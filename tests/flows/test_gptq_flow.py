"""GPTQ through the flow: its stages, the cache, the checkpoint equal to awq_core's, resume after SIGKILL."""
import json

import pytest

from awq_core.awq import quantize_model
from awq_core.calibration import calibration_blocks
from awq_core.checkpoint import GPTQ_LAYOUT, replace_linears, save_quantized
from awq_core.config import CalibrationConfig, GPTQConfig, QuantConfig
from awq_core.models import load_model
from flows.quantize import run_quantize
from flows.records import MANIFEST_FILE
from tasks.checkpoints import KILL_AFTER_ENV
from test_quantize_flow import checkpoint_bytes, cli, computed, settings, tiny_dir  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("prefect_harness")

GPTQ = QuantConfig(method="gptq", w_bit=3, group_size=32, gptq=GPTQConfig(desc_act=True),
                   calibration=CalibrationConfig(n_samples=4, seqlen=32))  # fmt: skip


def test_gptq_flow_stages_cache_and_equals_the_direct_path(tiny_dir, tmp_path):
    first = run_quantize(settings(tiny_dir, tmp_path / "flow", GPTQ), tmp_path / "runs" / "g", progress_bars=False)
    assert computed(first) == {"load": 1, "gptq": 2, "pack": 1, "validate": 1}
    again = run_quantize(settings(tiny_dir, tmp_path / "flow", GPTQ), tmp_path / "runs" / "g", progress_bars=False)
    assert set(computed(again).values()) == {0}
    layers = [json.loads(line) for line in (tmp_path / "runs" / "g" / "layers.jsonl").read_text().splitlines()]
    assert len(layers) == 14 and all(row["damp"] == 0.01 and row["final_error"] < row["rtn_error"] for row in layers)
    assert all(row["weight_error"] > 0 and row["input_max_over_mean"] >= 1 for row in layers)
    page = (tmp_path / "runs" / "g" / "report.html").read_text()
    assert "GPTQ damping" in page and "gptq w3 g32" in page and "act-order" in page

    model, tokenizer = load_model(tiny_dir)
    result = quantize_model(model, calibration_blocks(tokenizer, GPTQ.calibration), GPTQ, batch_size=2)
    replace_linears(model, result.quantized, GPTQ_LAYOUT)
    save_quantized(model, tmp_path / "direct", GPTQ.hf_quantization_config(), tokenizer=tokenizer)
    flow_files, direct_files = checkpoint_bytes(tmp_path / "flow"), checkpoint_bytes(tmp_path / "direct")
    assert flow_files["model.safetensors"] == direct_files["model.safetensors"]
    assert flow_files["quantize_config.json"] == direct_files["quantize_config.json"]


def test_killed_gptq_run_resumes_byte_identical(tiny_dir, tmp_path):
    reference = tmp_path / "reference"
    run_quantize(settings(tiny_dir, reference / "out", GPTQ), reference / "runs" / "r", progress_bars=False)
    run_dir, out = tmp_path / "killed" / "runs" / "r", tmp_path / "killed" / "out"
    args = ["quantize", tiny_dir, "--out", str(out), "--run-dir", str(run_dir), "--method", "gptq", "--w-bit", "3",
            "--group-size", "32", "--desc-act", "--n-samples", "4", "--seqlen", "32",
            "--batch-size", "2", "--eval-window", "64", "--eval-windows", "1"]  # fmt: skip
    killed = cli(args, {KILL_AFTER_ENV: "blocks/000/quantized-output-"})  # dies after block 0's GPTQ
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not out.exists() and (run_dir / MANIFEST_FILE).is_file()
    resumed = cli(["resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert checkpoint_bytes(out) == checkpoint_bytes(reference / "out")
