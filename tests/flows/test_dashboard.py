"""The dashboard page: real runs of a tiny model, synthetic runs of 32 and 80 blocks, escaping."""
import json
import re
import time
from html import escape

import pytest

from awq_core.awq import quantize_model
from awq_core.calibration import calibration_blocks
from awq_core.config import CalibrationConfig, ClipConfig, Method, QuantConfig
from awq_core.evaluate import EvalSettings, eval_tokens, evaluate
from awq_core.models import load_model
from awqflow.cli import main
from flows.dashboard.data import load_runs, read_layers
from flows.dashboard.page import CSP, SORT_SCRIPT, WORST_SHOWN, render_page, script_hash
from flows.dashboard.report import write_report
from flows.records import LAYERS_FILE, RunRecords, RunSettings
from page_elements import elements
from synthetic_runs import synthetic_layers, write_synthetic_run
from tiny_models import save_tiny_model

CONFIG = QuantConfig(group_size=32, n_grid=5, clip=ClipConfig(n_grid=10, n_sample_tokens=64),
                     calibration=CalibrationConfig(n_samples=4, seqlen=32))  # fmt: skip
EVAL = EvalSettings(("builtin:heldout-reference",), window=64, max_windows=1)


def record_run(run_dir, model_dir, config: QuantConfig):
    """Quantize the tiny model and write its records as the flow does: run.json, layers.jsonl, report.json."""
    settings = RunSettings(model=str(model_dir), out=str(run_dir / "out"), config=config, eval_texts=list(EVAL.texts))
    records = RunRecords(run_dir, settings)
    records.start()
    model, tokenizer = load_model(str(model_dir))
    tokens = eval_tokens(tokenizer, EVAL.texts)
    float_ppl = evaluate(model, tokens, EVAL)
    records.blocks(model.config.num_hidden_layers)
    result = quantize_model(model, calibration_blocks(tokenizer, config.calibration), config, batch_size=2)
    records.append_layers([m.to_dict() for m in result.metrics])
    records.finish({"model": str(model_dir), "method": config.method.value, "perplexity": evaluate(model, tokens, EVAL),
                    "float_perplexity": float_ppl, "seconds": result.seconds})  # fmt: skip
    return run_dir


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    model_dir = save_tiny_model(root / "model")
    awq = record_run(root / "tiny-awq", model_dir, CONFIG)
    rtn = record_run(root / "tiny-rtn", model_dir, CONFIG.model_copy(update={"method": Method.RTN}))
    return awq, rtn


def type_table_of(html: str, run_index: int) -> str:
    return html.split(f'id="types-{run_index}"')[1].split("</table>")[0]


def test_page_of_a_tiny_model_run(tiny_runs):
    awq, _ = tiny_runs
    [run] = load_runs([awq])
    page = elements(render_page([run]))
    layers = run.layers
    assert len(layers) == 14  # 2 blocks x 7 linears
    text = "".join(page.text)
    assert all(layer["name"] in text for layer in layers)
    assert run.settings["model"] in text and "complete" in text and "awq w4 g32" in text
    counts = page.classes
    assert counts["rect.cell"] == 14 and counts["rect.rank"] == 14 and counts["circle.dot"] == 14
    assert counts["rect.bar"] == min(WORST_SHOWN, 14)
    assert counts["circle.point"] == 2 * 2  # 2 blocks: the run's line and its RTN line
    # The bars run from the worst layer down, and every bar's tooltip names its layer.
    worst = max(layers, key=lambda l: l["final_error"])
    bars = re.findall(r'<rect class="bar"[^>]*><title>([^<]*)</title>', render_page([run]))
    assert bars[0].startswith(escape(worst["name"]))
    # fp vs quantized perplexity, from the report
    ppl, fp = run.report["perplexity"]["builtin:heldout-reference"], run.report["float_perplexity"]["builtin:heldout-reference"]
    assert f"{ppl:.3f} (fp {fp:.3f}, {100 * (ppl / fp - 1):+.1f}%)" in text
    # The per-linear-type table: AWQ records scales and clips, so their columns are there.
    assert "scale max/mean (median)" in text and "ranges clipped" in text and "GPTQ damping" not in text


def test_two_runs_overlaid(tiny_runs):
    awq, rtn = tiny_runs
    html = render_page(load_runs([awq, rtn]))
    page = elements(html)
    assert page.classes["rect.cell"] == 14 + 14 + 14  # each run's heatmap, then rtn / awq
    assert page.classes["rect.bar"] == 2 * 14 and page.classes["rect.rank"] == 2 * 14
    assert page.classes["circle.point"] == 3 * 2  # awq, awq's RTN, rtn
    assert "tiny-rtn vs tiny-awq" in "".join(page.text)
    # The RTN run reproduces the AWQ run's RTN errors, so every ratio cell is >= 1 except by noise.
    ratios = [float(r) for r in re.findall(r"tiny-rtn / tiny-awq = ([0-9.e+-]+)", html)]
    assert len(ratios) == 14 and sum(r >= 1 for r in ratios) >= 12, ratios
    # An RTN run records no scales: its type table has no scale column.
    rtn_table = type_table_of(html, 1)
    assert "input max/mean" in rtn_table and "scale max/mean" not in rtn_table


def test_32_blocks_render_in_under_a_second(tmp_path):
    a = write_synthetic_run(tmp_path / "a", 32, "awq")
    b = write_synthetic_run(tmp_path / "b", 32, "gptq", seed=1)
    start = time.perf_counter()
    html = render_page(load_runs([a, b]))
    seconds = time.perf_counter() - start
    assert seconds < 1.0, f"rendering 2 runs of 32 x 7 layers took {seconds:.2f} s"
    page = elements(html)
    assert page.classes["rect.cell"] == 3 * 32 * 7 and page.classes["rect.rank"] == 2 * 32 * 7
    assert page.classes["rect.bar"] == 2 * WORST_SHOWN


def test_80_blocks_stay_usable(tmp_path):
    html = render_page(load_runs([write_synthetic_run(tmp_path / "big", 80, "awq")]))
    page = elements(html)
    assert page.classes["rect.cell"] == 80 * 7 and page.classes["circle.dot"] == 80 * 7
    assert page.classes["rect.bar"] == WORST_SHOWN, "the named bars stay a readable few"
    assert len(html) < 3_000_000, f"page of {len(html) / 1e6:.1f} MB"
    widths = [int(w) for w in re.findall(r'<svg class="chart [^"]*"[^>]* width="(\d+)"', html)]
    assert widths and max(widths) <= 1000, f"a chart {max(widths)} px wide does not fit a screen"
    heatmap = html.split('<svg class="chart heatmap"')[1].split("</svg>")[0]
    block_labels = re.findall(r'text-anchor="middle" >(\d+)</text>', heatmap)
    assert 10 <= len(block_labels) < 80, "block numbers are thinned out so that they do not overlap"


def test_missing_keys_and_other_methods(tmp_path):
    """Older runs lack the newer metrics; GPTQ runs add damping; neither breaks the page."""
    old = [{"name": f"model.layers.{b}.mlp.down_proj", "block": b, "rtn_error": 0.01, "final_error": 0.005} for b in range(3)]
    old_run = write_synthetic_run(tmp_path / "old", 3, "awq", layers=old)
    gptq_run = write_synthetic_run(tmp_path / "gptq", 3, "gptq")
    html = render_page(load_runs([old_run, gptq_run]))
    old_table, gptq_table = type_table_of(html, 0), type_table_of(html, 1)
    assert "GPTQ damping" in gptq_table and "GPTQ damping" not in old_table
    assert "input max/mean" not in old_table
    assert elements(html).classes["circle.dot"] == 3 * 7  # the old run has no input spread to plot


def test_unfinished_run_and_torn_last_line(tmp_path):
    rows = synthetic_layers(2)
    run_dir = write_synthetic_run(tmp_path / "running", 2, layers=rows[:7], complete=False)
    with open(run_dir / LAYERS_FILE, "a") as f:
        f.write(json.dumps(rows[7])[:30])  # the flow is writing this line right now
    [run] = load_runs([run_dir])
    assert len(run.layers) == 7 and run.state == "1/2 blocks" and run.report is None
    assert "1/2 blocks" in render_page([run])
    (run_dir / LAYERS_FILE).write_text("{broken\n" + json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        read_layers(run_dir / LAYERS_FILE)


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>&"\''


def test_every_string_from_a_run_is_escaped(tmp_path):
    layers = synthetic_layers(2)
    for row in layers:
        row["name"] = row["name"].replace("mlp", "<b onmouseover=alert(2)>mlp")
    run_dir = write_synthetic_run(tmp_path / "run<svg onload=alert(3)>", 2, model=HOSTILE, layers=layers)
    settings = json.loads((run_dir / "run.json").read_text())
    settings["config"]["calibration"]["source"] = "</pre><script>alert(4)</script>"
    settings["eval_texts"] = ["<i>t</i>"]
    (run_dir / "run.json").write_text(json.dumps(settings))
    report = json.loads((run_dir / "report.json").read_text())
    report["perplexity"] = {"<script>alert(5)</script>": 7.0}
    (run_dir / "report.json").write_text(json.dumps(report))
    html = render_page(load_runs([run_dir]))
    for raw in ("<script>alert", "<img src=x", "<b onmouseover", "<svg onload", "</pre><script>"):
        assert raw not in html, f"{raw!r} reached the page unescaped"
    page = elements(html)
    assert page.tags["script"] == 1 and page.tags["img"] == 0 and page.tags["b"] == 0
    assert page.scripts == [SORT_SCRIPT], "the only script is the page's own"
    text = "".join(page.text)
    assert HOSTILE in text and "<b onmouseover=alert(2)>mlp" in text  # shown as text, not dropped
    assert f"script-src '{script_hash(SORT_SCRIPT)}'" in CSP and "default-src 'none'" in CSP


def test_report_command(tiny_runs, tmp_path, capsys):
    awq, rtn = tiny_runs
    out = tmp_path / "reports" / "report.html"
    assert main(["report", str(awq), str(rtn), "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert out.read_text() == render_page(load_runs([awq, rtn]))
    assert main(["report", str(tmp_path / "nowhere"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "not an awqflow run directory" in err and "Traceback" not in err
    with pytest.raises(IsADirectoryError, match="give the report a file name"):
        write_report([awq], tmp_path)
