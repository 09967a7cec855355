"""The dashboard page of one or more runs: one self-contained HTML document (inline CSS, SVG and a
few lines of script to sort tables). The first run is the baseline the others are compared with.

A Content-Security-Policy lets the page load nothing and run only its own script (by hash), so even
a string that escaped escaping could neither fetch nor execute anything.
"""
from __future__ import annotations

import base64
import hashlib
import math

from awq_core.layer_stats import OUTLIER_FACTOR
from flows.dashboard.charts import (
    DIVERGING,
    RUN_COLORS,
    SEQUENTIAL,
    Cell,
    LogScale,
    HEATMAP_ROW,
    HEATMAP_TOP,
    Series,
    dots,
    esc,
    fmt,
    heatmap,
    hbars,
    legend_ramp,
    lines,
    ramp,
    ranked,
)
from flows.dashboard.data import Run, block_errors, blocks, grid, linear_type, linear_types, number, worst_layers
from flows.dashboard.tables import layer_table, layer_tooltip, summary_table, type_table

WORST_SHOWN = 20  # named bars: enough to see a pattern (one linear type, the last blocks), few enough to read
MAX_RUNS = len(RUN_COLORS)
RATIO_RANGE = 2.0  # the comparison heatmap's colors saturate at 2^-2 and 2^2 = 4x less or more error

SORT_SCRIPT = """
for (const table of document.querySelectorAll("table.sortable")) table.classList.add("ready");  // headings sort
for (const th of document.querySelectorAll("table.sortable th")) {
  th.addEventListener("click", () => {
    const body = th.closest("table").tBodies[0], col = th.cellIndex;
    const dir = th.dataset.dir === "desc" ? 1 : -1;
    th.dataset.dir = dir > 0 ? "asc" : "desc";
    const key = (row) => { const c = row.cells[col]; return c.dataset.v !== undefined ? parseFloat(c.dataset.v) : c.textContent; };
    [...body.rows].sort((a, b) => { const x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * dir; })
      .forEach((row) => body.appendChild(row));
  });
}
"""
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1180px; padding: 0 20px 40px; color: #222; }
h1 { font-size: 22px; margin: 18px 0 4px; } h2 { font-size: 17px; margin: 28px 0 6px; border-bottom: 1px solid #ddd; }
nav a { margin-right: 14px; } .note { color: #555; max-width: 900px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 12.5px; } th, td { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
table.sortable th { background: #f6f6f6; position: sticky; top: 0; } table.ready th { cursor: pointer; } td.num { text-align: right; position: relative; white-space: nowrap; }
span.share { position: absolute; left: 0; top: 3px; bottom: 3px; background: #fdd0a2; z-index: -1; }
table.summary td { max-width: 420px; overflow-wrap: anywhere; } pre { white-space: pre-wrap; font-size: 11px; }
svg.chart { display: block; max-width: 100%; height: auto; margin: 6px 0; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 6px; }
""" + "".join(f".s{i} {{ background: {c}; }}\n" for i, c in enumerate(RUN_COLORS))


def script_hash(script: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()


CSP = f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src '{script_hash(SORT_SCRIPT)}'"


def section(anchor: str, title: str, note: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2><p class="note">{esc(note)}</p>{body}</section>'


def error_scale(runs: list[Run]) -> LogScale:
    errors = [number(l, key) for run in runs for l in run.layers for key in ("final_error", "rtn_error")]
    return LogScale.over([e for e in errors if e is not None], 0.0, 1.0)


def below(legend: list[str], types: list[str]) -> list[str]:
    """A heatmap's legend, moved below its rows."""
    return [f'<g transform="translate(0 {HEATMAP_TOP + HEATMAP_ROW * len(types) + 30})">' + "".join(legend) + "</g>"]


def ratio_color(ratio: float) -> str:
    """White at 1, blue below, red above, saturating at 2^-RATIO_RANGE and 2^RATIO_RANGE."""
    log_ratio = max(-RATIO_RANGE, min(RATIO_RANGE, math.log2(ratio)))
    return ramp(DIVERGING, (log_ratio + RATIO_RANGE) / (2 * RATIO_RANGE))


def error_heatmaps(runs: list[Run], types: list[str], block_ids: list[int]) -> str:
    scale = error_scale(runs)  # one color scale for every run, so that colors compare across runs
    legend = legend_ramp(80, 0, 300, SEQUENTIAL, f"{scale.lo:.0e}", f"{scale.hi:.0e}", "relative output error (log)")
    parts = []
    for run in runs:
        cells = {key: Cell(number(l, "final_error"), layer_tooltip(l, run.label)) for key, l in grid(run).items()}
        chart = heatmap(types, block_ids, cells, lambda v: ramp(SEQUENTIAL, scale.fraction(v)), below(legend, types),
                        f"output error of {run.label}")
        parts.append(f"<h3>{esc(run.label)}</h3>{chart}")
    base = grid(runs[0])
    for run in runs[1:]:
        cells = {}
        for key, layer in grid(run).items():
            a, b = number(base.get(key), "final_error"), number(layer, "final_error")
            ratio = b / a if a and b else None
            tip = f"{layer['name']}: {run.label} / {runs[0].label} = {fmt(ratio)} (errors {fmt(b)} vs {fmt(a)})"
            cells[key] = Cell(ratio, tip)
        legend = legend_ramp(80, 0, 300, DIVERGING, f"{2 ** -RATIO_RANGE:g}x", f"{2 ** RATIO_RANGE:g}x",
                             f"error of {run.label} / error of {runs[0].label}")
        chart = heatmap(types, block_ids, cells, ratio_color, below(legend, types), f"error ratio {run.label} / {runs[0].label}")
        parts.append(f"<h3>{esc(run.label)} vs {esc(runs[0].label)} (blue: less error, red: more)</h3>{chart}")
    return "".join(parts)


def block_lines(runs: list[Run], block_ids: list[int]) -> str:
    series = []
    for i, run in enumerate(runs):
        for key, name, dashed in (("final_error", run.label, False), ("rtn_error", f"{run.label}: RTN", True)):
            if dashed and i > 0:
                continue  # one RTN line (the first run's) is the baseline; more would only repeat it
            means = block_errors(run, key)
            series.append(Series(name, RUN_COLORS[i], [means.get(b) for b in block_ids],
                                 [f"block {b}, {name}: {fmt(means.get(b))}" for b in block_ids], dashed=dashed))  # fmt: skip
    return lines(block_ids, series, "block", "error, geo mean", "error per block")


def worst_bars(runs: list[Run]) -> str:
    worst = worst_layers(runs[0], WORST_SHOWN)
    names = [l["name"] for l in worst]
    series = []
    for i, run in enumerate(runs):
        by_name = {l["name"]: l for l in run.layers}
        rows = [by_name.get(n) for n in names]
        series.append(Series(run.label, RUN_COLORS[i], [number(r, "final_error") for r in rows],
                             [layer_tooltip(r, run.label) if r else f"{n}: not in {run.label}" for n, r in zip(names, rows)],
                             markers=[number(r, "rtn_error") for r in rows]))  # fmt: skip
    return hbars(names, series, "relative output error (tick: RTN)", "worst layers")


def ranked_bars(runs: list[Run]) -> str:
    series = [Series(run.label, RUN_COLORS[i], [number(l, "final_error") for l in run.layers],
                     [layer_tooltip(l, run.label) for l in run.layers]) for i, run in enumerate(runs)]  # fmt: skip
    return ranked(series, "error", "every layer, sorted")


def channel_dots(runs: list[Run], types: list[str]) -> str:
    series, members = [], []
    for i, run in enumerate(runs):
        series.append(Series(run.label, RUN_COLORS[i], [number(l, "input_max_over_mean") for l in run.layers],
                             [layer_tooltip(l, run.label) for l in run.layers]))  # fmt: skip
        members.append([[j for j, l in enumerate(run.layers) if linear_type(l["name"]) == t] for t in types])
    return dots(types, series, members, OUTLIER_FACTOR, "input max/mean", "input channel spread per linear type")


def render_page(runs: list[Run]) -> str:
    assert 1 <= len(runs) <= MAX_RUNS, f"the dashboard compares 1 to {MAX_RUNS} runs, got {len(runs)}: pass fewer run directories"
    types, block_ids = linear_types(runs), blocks(runs)
    has_layers = any(run.layers for run in runs)
    has_channels = any(number(l, "input_max_over_mean") is not None for run in runs for l in run.layers)
    empty = '<p class="note">No layers recorded yet: the run has not finished its first block.</p>'
    title = " vs ".join(run.label for run in runs)
    sections = [section("summary", "Runs", "Perplexity on held-out text (fp: the float model, when the run measured it), "
                        "checkpoint size and time.", summary_table(runs))]  # fmt: skip
    if has_layers:
        sections += [
            section("heatmap", "Output error by block and linear", "Relative output error ||x W_q - x W||^2 / ||x W||^2 "
                    "of each quantized linear on the calibration inputs; hover a cell for its numbers.",
                    error_heatmaps(runs, types, block_ids)),
            section("blocks", "Error per block", "Geometric mean over a block's linears; dashed: what RTN gives the first run's layers.",
                    block_lines(runs, block_ids)),
            section("worst", f"The {WORST_SHOWN} worst layers", f"Sorted by the output error of {runs[0].label}; the black tick is "
                    "the error of plain round-to-nearest on the same layer.", worst_bars(runs)),
            section("ranked", "Every layer, sorted", "One bar a layer, worst first: a few bad layers or a broad loss.", ranked_bars(runs)),
        ]  # fmt: skip
        channel_note = (f"Which projections have outlier channels: the spread of each linear's input, max over mean of the "
                        f"per-channel mean |x| (dashed: {OUTLIER_FACTOR:g}x), and of the scales AWQ chose for it.")  # fmt: skip
        tables = "".join(f"<h3>{esc(run.label)}</h3>{type_table(run, types, f'types-{i}')}" for i, run in enumerate(runs))
        sections.append(section("channels", "Channels per linear type", channel_note,
                                (channel_dots(runs, types) if has_channels else "") + tables))  # fmt: skip
        layers = "".join(f"<details><summary>{esc(run.label)}: {len(run.layers)} layers</summary>{layer_table(run, f'layers-{i}')}</details>"
                         for i, run in enumerate(runs))  # fmt: skip
        sections.append(section("layers", "Every layer", "Click a heading to sort.", layers))
    else:
        sections.append(empty)
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in (("summary", "runs"), ("heatmap", "heatmap"), ("blocks", "blocks"),
                  ("worst", "worst layers"), ("ranked", "all layers"), ("channels", "channels"), ("layers", "table")))  # fmt: skip
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>awqflow: {esc(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>Per-layer errors: {esc(title)}</h1><nav>{nav}</nav>"
        + "".join(sections) + f"<script>{SORT_SCRIPT}</script></body></html>\n"
    )
