"""What a run shows outside its checkpoint: the Prefect UI's artifacts and the run's report.html."""
import json

import pytest
from prefect.artifacts import Artifact

import flows.progress
from flows.dashboard.report import REPORT_HTML
from flows.progress import PROGRESS_KEY
from flows.quantize import run_quantize
from flows.records import LAYERS_FILE
from page_elements import elements
from test_quantize_flow import settings

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tiny_models import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def test_flow_publishes_progress_layers_and_a_linked_report(tiny_dir, tmp_path, monkeypatch):
    updates = []
    update = flows.progress.update_progress_artifact

    def recorded(artifact_id, progress, **kwargs):
        updates.append(progress)
        return update(artifact_id, progress, **kwargs)

    monkeypatch.setattr(flows.progress, "update_progress_artifact", recorded)
    run_dir = tmp_path / "runs" / "a"
    fp = {"builtin:heldout-reference": 123.456}  # what `--compare` measures for the float model
    report = run_quantize(settings(tiny_dir, tmp_path / "out", eval_texts=list(fp)), run_dir, progress_bars=False,
                          float_perplexity=fp)  # fmt: skip
    # One update per stage after the load (2 blocks x 4 stages, pack, validate), rising to 100 %.
    assert len(updates) == 2 * 4 + 2 and updates == sorted(updates) and updates[-1] == 100.0
    assert float(Artifact.get(PROGRESS_KEY).data) == 100.0
    layers = [json.loads(line) for line in (run_dir / LAYERS_FILE).read_text().splitlines()]
    table = json.loads(Artifact.get("awqflow-layer-errors").data)
    assert [row["name"] for row in table] == [l["name"] for l in layers]
    assert all(row["weight_error"] > 0 and row["input_max_over_mean"] >= 1 for row in table)
    page = run_dir / REPORT_HTML
    summary = Artifact.get("awqflow-summary").data
    assert page.resolve().as_uri() in summary and f"awqflow dashboard {run_dir}" in summary and "123.456" in summary
    html = page.read_text()
    assert all(l["name"] in html for l in layers)
    assert elements(html).classes["rect.cell"] == len(layers) == 14
    ppl = report["perplexity"]["builtin:heldout-reference"]
    assert f"{ppl:.3f} (fp 123.456" in html and report["float_perplexity"] == fp
