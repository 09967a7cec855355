"""Run directories as the dashboard reads them, and the aggregates its charts show.

Records are read as plain JSON, never through the settings model: a run written by an older or a
newer awqflow (other methods, keys added or missing) still loads, and every metric is optional.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from flows.records import LAYERS_FILE, REPORT_FILE, RUN_FILE, run_state

# Linear types in the order a decoder block applies them; others follow in order of appearance.
LINEAR_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Run:
    dir: Path
    label: str  # short and unique among the runs shown
    settings: dict  # run.json
    report: dict | None  # report.json; None while the run is unfinished
    layers: list[dict]  # layers.jsonl, one dict per quantized linear
    state: str  # "complete", "<done>/<total> blocks" or "started"
    config: dict = field(init=False)

    def __post_init__(self):
        self.config = self.settings.get("config") or {}

    @property
    def method(self) -> str:
        return str(self.config.get("method", "?"))


def number(row: dict | None, key: str) -> float | None:
    """A finite number under `key`, or None (missing, null, NaN, or not a number)."""
    value = (row or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_layers(path: Path) -> list[dict]:
    """layers.jsonl; a running flow may be mid-way through its last line, which is then left out.
    A layer recorded twice keeps its last record."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    by_name: dict[str, dict] = {}
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON; the run's records are damaged (re-run it)") from None
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise ValueError(f"{path}: line {i + 1} has no layer name; the run's records are damaged (re-run it)")
        by_name[row["name"]] = row
    return list(by_name.values())


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def load_run(run_dir: str | Path, label: str | None = None) -> Run:
    run_dir = Path(run_dir)
    settings = read_json(run_dir / RUN_FILE)
    if settings is None:
        raise FileNotFoundError(f"{run_dir / RUN_FILE} is missing: {run_dir} is not an awqflow run directory "
                                "(pass a directory under runs/, see `awqflow runs`)")  # fmt: skip
    return Run(run_dir, label or run_dir.resolve().name, settings, read_json(run_dir / REPORT_FILE),
               read_layers(run_dir / LAYERS_FILE), run_state(run_dir))  # fmt: skip


def load_runs(run_dirs: list[str | Path]) -> list[Run]:
    assert run_dirs, "give at least one run directory"
    names = [Path(d).resolve().name for d in run_dirs]
    # Two runs of the same name (other roots) get their parent's name too, so the legend tells them apart.
    labels = [f"{Path(d).resolve().parent.name}/{n}" if names.count(n) > 1 else n for d, n in zip(run_dirs, names)]
    return [load_run(d, label) for d, label in zip(run_dirs, labels)]


def linear_type(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def linear_types(runs: list[Run]) -> list[str]:
    seen = list(dict.fromkeys(linear_type(l["name"]) for run in runs for l in run.layers))
    known = [t for t in LINEAR_ORDER if t in seen]
    return known + [t for t in seen if t not in LINEAR_ORDER]


def block_of(layer: dict) -> int:
    block = layer.get("block")
    return block if isinstance(block, int) and not isinstance(block, bool) else -1


def blocks(runs: list[Run]) -> list[int]:
    return sorted({block_of(l) for run in runs for l in run.layers})


def grid(run: Run) -> dict[tuple[int, str], dict]:
    """Layers by (block, linear type)."""
    return {(block_of(l), linear_type(l["name"])): l for l in run.layers}


def geometric_mean(values: list[float]) -> float | None:
    positive = [v for v in values if v > 0]
    return math.exp(sum(map(math.log, positive)) / len(positive)) if positive else None


def block_errors(run: Run, key: str = "final_error") -> dict[int, float]:
    """Per block, the geometric mean of its layers' errors (errors spread over decades: an arithmetic
    mean would be its worst layer's)."""
    per_block: dict[int, list[float]] = {}
    for layer in run.layers:
        value = number(layer, key)
        if value is not None:
            per_block.setdefault(block_of(layer), []).append(value)
    means = {b: geometric_mean(v) for b, v in per_block.items()}
    return {b: m for b, m in sorted(means.items()) if m is not None}


def worst_layers(run: Run, n: int, key: str = "final_error") -> list[dict]:
    scored = [l for l in run.layers if number(l, key) is not None]
    return sorted(scored, key=lambda l: -number(l, key))[:n]


@dataclass
class TypeSummary:
    """One linear type's layers of one run: errors and the spread of their channels."""

    linear_type: str
    layers: int
    values: dict[str, float | None]  # by column key of TYPE_COLUMNS


# Columns of the per-linear-type table: (key, heading, how the layers' values are reduced, metric key).
TYPE_COLUMNS = (
    ("final_error", "output error (geo mean)", "geomean", "final_error"),
    ("rtn_error", "RTN error (geo mean)", "geomean", "rtn_error"),
    ("input_max_over_mean", "input max/mean (median)", "median", "input_max_over_mean"),
    ("input_max_over_mean_max", "input max/mean (max)", "max", "input_max_over_mean"),
    ("input_outlier_share", "input channels > 5x mean", "mean", "input_outlier_share"),
    ("scale_ratio", "scale ratio r (mean)", "mean", "scale_ratio"),
    ("scale_max_over_mean", "scale max/mean (median)", "median", "scale_max_over_mean"),
    ("scale_outlier_share", "scales > 5x mean", "mean", "scale_outlier_share"),
    ("clip_ratio_mean", "clip ratio (mean)", "mean", "clip_ratio_mean"),
    ("clip_share", "ranges clipped", "mean", "clip_share"),
    ("weight_error", "weight error (geo mean)", "geomean", "weight_error"),
    ("damp", "GPTQ damping (mean)", "mean", "damp"),
    ("gptq_loss", "GPTQ loss (geo mean)", "geomean", "gptq_loss"),
    ("seconds", "seconds (sum)", "sum", "seconds"),
)
REDUCE = {"geomean": geometric_mean, "median": statistics.median, "max": max, "mean": statistics.fmean, "sum": sum}


def type_summaries(run: Run, types: list[str]) -> list[TypeSummary]:
    by_type: dict[str, list[dict]] = {t: [] for t in types}
    for layer in run.layers:
        by_type.setdefault(linear_type(layer["name"]), []).append(layer)
    summaries = []
    for t, layers in by_type.items():
        values = {}
        for column, _, how, key in TYPE_COLUMNS:
            present = [v for v in (number(l, key) for l in layers) if v is not None]
            values[column] = REDUCE[how](present) if present else None
        if layers:
            summaries.append(TypeSummary(t, len(layers), values))
    return summaries


def summary_numbers(run: Run) -> dict[str, float | None]:
    finals = [v for v in (number(l, "final_error") for l in run.layers) if v is not None]
    rtns = [v for v in (number(l, "rtn_error") for l in run.layers) if v is not None]
    return {
        "final_geomean": geometric_mean(finals),
        "final_median": statistics.median(finals) if finals else None,
        "rtn_geomean": geometric_mean(rtns),
        "seconds": sum(v for v in (number(l, "seconds") for l in run.layers) if v is not None),
    }


def run_json(run: Run) -> dict:
    """Everything the page shows of a run, as JSON (the server's /data.json)."""
    return {"dir": str(run.dir), "label": run.label, "state": run.state, "settings": run.settings, "report": run.report,
            "layers": run.layers}  # fmt: skip
