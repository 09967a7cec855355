import json
from pathlib import Path

import pytest
import torch

import awqflow

from awqflow.cli import main
from tiny_models import save_tiny_model


pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default run directories go under ./runs


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


SMALL = ["--group-size", "32", "--n-samples", "4", "--seqlen", "32", "--n-grid", "5", "--eval-window", "64", "--eval-windows", "2"]


def test_quantize_compare_then_eval(tiny_dir, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", str(tiny_dir), "--out", str(out), "--compare", *SMALL]) == 0
    printed = capsys.readouterr().out
    for method in ("fp", "rtn", "awq"):
        assert f"\n{method} " in printed
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "awq"
    assert config["quantization_config"]["group_size"] == 32
    layers = [json.loads(line) for line in (out / "awqflow_layers.jsonl").read_text().splitlines()]
    assert len(layers) == 14 and all(l["final_error"] >= 0 for l in layers)
    assert (out / "tokenizer.json").is_file()
    assert main(["eval", str(out), "--eval-window", "64", "--eval-windows", "2"]) == 0
    assert "ckpt" in capsys.readouterr().out
    model = awqflow.from_quantized(out, dtype=torch.float32)
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "WQLinear"
    assert type(model.lm_head).__name__ == "Linear"


def test_errors_are_one_clear_line(tiny_dir, tmp_path, capsys):
    code = main(["quantize", str(tiny_dir), "--out", str(tmp_path / "x"), "--group-size", "128", "--n-samples", "2", "--seqlen", "32"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    [line] = [l for l in err.splitlines() if "awqflow: error" in l]
    assert "in_features=64" in line and "[32, 64, -1]" in line
    assert main(["eval", str(tmp_path / "missing")]) == 1
    assert "config.json" in capsys.readouterr().err


def test_unsupported_architecture_is_refused_before_loading_weights(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    assert main(["quantize", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "model_type='gpt2'" in err and "llama" in err


def test_quantize_again_resumes_and_runs_lists_it(tiny_dir, tmp_path, capsys):
    args = ["quantize", str(tiny_dir), "--out", str(tmp_path / "q"), *SMALL]
    assert main(args) == 0
    [run_dir] = [d for d in (tmp_path / "runs").iterdir() if not d.name.startswith(".")]
    assert run_dir.name.startswith("model-")
    report = json.loads((run_dir / "report.json").read_text())
    assert report["stages"]["capture"]["computed"] == 2
    assert main(args) == 0
    assert json.loads((run_dir / "report.json").read_text())["stages"]["capture"]["computed"] == 0
    capsys.readouterr()
    assert main(["runs"]) == 0
    assert capsys.readouterr().out.split() == ["complete", str(Path("runs") / run_dir.name)]
    assert main(["resume", str(run_dir)]) == 0
    assert main(["resume", str(tmp_path / "nowhere")]) == 1
    assert "not an awqflow run directory" in capsys.readouterr().err
