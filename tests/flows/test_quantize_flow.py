"""The flow on a tiny random model: caching, resumption after SIGKILL, corruption, setting changes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from awq_core.awq import quantize_model
from awq_core.calibration import calibration_blocks
from awq_core.checkpoint import replace_linears, save_quantized
from awq_core.config import CalibrationConfig, ClipConfig, QuantConfig
from awq_core.models import load_model
from flows.quantize import run_quantize
from flows.records import MANIFEST_FILE, RunSettings, list_runs
from tasks.checkpoints import KILL_AFTER_ENV
from tiny_models import save_tiny_model

pytestmark = pytest.mark.usefixtures("prefect_harness")

CONFIG = QuantConfig(group_size=32, n_grid=5, clip=ClipConfig(n_grid=10, n_sample_tokens=64),
                     calibration=CalibrationConfig(n_samples=4, seqlen=32))  # fmt: skip
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def settings(tiny_dir, out, config=CONFIG, **extra) -> RunSettings:
    return RunSettings(model=tiny_dir, out=str(out), config=config, eval_window=64, eval_windows=1, batch_size=2, **extra)


def computed(report) -> dict[str, int]:
    return {stage: counts["computed"] for stage, counts in report["stages"].items()}


def checkpoint_bytes(directory) -> dict[str, bytes]:
    """The checkpoint's files (weights, config, tokenizer); the layer metrics hold timings, so not them."""
    return {p.name: p.read_bytes() for p in Path(directory).iterdir() if p.is_file() and p.name != "awqflow_layers.jsonl"}


def test_second_run_hits_the_cache_for_every_task(tiny_dir, tmp_path):
    first = run_quantize(settings(tiny_dir, tmp_path / "out"), tmp_path / "runs" / "a", progress_bars=False)
    assert computed(first) == {"load": 1, "capture": 2, "scales": 2, "clip": 2, "fuse": 2, "pack": 1, "validate": 1}
    again = run_quantize(settings(tiny_dir, tmp_path / "out"), tmp_path / "runs" / "a", progress_bars=False)
    assert set(computed(again).values()) == {0}, again["stages"]
    assert again["perplexity"] == first["perplexity"]
    assert list_runs(tmp_path / "runs") == [(tmp_path / "runs" / "a", "complete")]
    lines = (tmp_path / "runs" / "a" / "layers.jsonl").read_text().splitlines()
    assert len(lines) == 14


def test_flow_checkpoint_is_byte_identical_to_quantize_model(tiny_dir, tmp_path):
    run_quantize(settings(tiny_dir, tmp_path / "flow"), tmp_path / "runs" / "a", progress_bars=False)
    model, tokenizer = load_model(tiny_dir)
    result = quantize_model(model, calibration_blocks(tokenizer, CONFIG.calibration), CONFIG, batch_size=2)
    replace_linears(model, result.quantized, CONFIG.version)
    save_quantized(model, tmp_path / "direct", CONFIG.hf_quantization_config(), tokenizer=tokenizer)
    flow_files, direct_files = checkpoint_bytes(tmp_path / "flow"), checkpoint_bytes(tmp_path / "direct")
    assert flow_files["model.safetensors"] == direct_files["model.safetensors"]
    assert flow_files["config.json"] == direct_files["config.json"]


def test_corrupted_or_missing_checkpoint_is_recomputed(tiny_dir, tmp_path):
    run_dir = tmp_path / "runs" / "a"
    run_quantize(settings(tiny_dir, tmp_path / "out"), run_dir, progress_bars=False)
    reference = checkpoint_bytes(tmp_path / "out")
    [capture] = (run_dir / "blocks" / "001").glob("capture-*.safetensors")
    data = bytearray(capture.read_bytes())
    data[len(data) // 2] ^= 0xFF
    capture.write_bytes(bytes(data))
    [fused] = (run_dir / "blocks" / "000").glob("fused-*.safetensors")
    fused.unlink()
    report = run_quantize(settings(tiny_dir, tmp_path / "out"), run_dir, progress_bars=False)
    # Recomputed files have the same digests, so everything downstream of them is still cached.
    assert computed(report) == {"load": 0, "capture": 1, "scales": 0, "clip": 0, "fuse": 1, "pack": 0, "validate": 0}
    assert checkpoint_bytes(tmp_path / "out") == reference


def test_changing_clip_settings_reuses_captures_and_scales(tiny_dir, tmp_path):
    run_quantize(settings(tiny_dir, tmp_path / "a"), tmp_path / "runs" / "a", progress_bars=False)
    other_clip = CONFIG.model_copy(update={"clip": ClipConfig(n_grid=12, n_sample_tokens=64)})
    report = run_quantize(settings(tiny_dir, tmp_path / "b", other_clip), tmp_path / "runs" / "b", progress_bars=False)
    assert computed(report) == {"load": 0, "capture": 0, "scales": 0, "clip": 2, "fuse": 2, "pack": 1, "validate": 1}
    other_group = CONFIG.model_copy(update={"group_size": 64})
    report = run_quantize(settings(tiny_dir, tmp_path / "c", other_group), tmp_path / "runs" / "c", progress_bars=False)
    # The check of the group size reloads the model, but the captures do not depend on it.
    assert computed(report) == {"load": 1, "capture": 0, "scales": 2, "clip": 2, "fuse": 2, "pack": 1, "validate": 1}


def cli(args, env_extra=None) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value() or "", **(env_extra or {})}
    command = [sys.executable, "-m", "awqflow.cli", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_sigkill_mid_block_then_rerun_finishes_byte_identical(tiny_dir, tmp_path):
    reference = tmp_path / "reference"
    run_quantize(settings(tiny_dir, reference / "out"), reference / "runs" / "r", progress_bars=False)
    run_dir, out = tmp_path / "killed" / "runs" / "r", tmp_path / "killed" / "out"
    config = tmp_path / "config.json"
    config.write_text(CONFIG.to_json())
    args = ["quantize", tiny_dir, "--out", str(out), "--run-dir", str(run_dir), "--config", str(config), "--batch-size", "2",
            "--eval-window", "64", "--eval-windows", "1"]  # fmt: skip
    killed = cli(args, {KILL_AFTER_ENV: "blocks/001/capture-"})  # dies after writing block 1's capture
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not out.exists() and (run_dir / MANIFEST_FILE).is_file()
    assert cli(["runs", "--root", str(run_dir.parent)]).stdout.split()[0] == "1/2"
    resumed = cli(["resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert checkpoint_bytes(out) == checkpoint_bytes(reference / "out")
    assert "complete" in cli(["runs", "--root", str(run_dir.parent)]).stdout
