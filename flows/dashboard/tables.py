"""The page's HTML tables: the run summary, the per-linear-type table, every layer. Cells that sort
by number carry it in `data-v`; every string from a run is escaped."""
from __future__ import annotations

import json

from awq_core.layer_stats import OUTLIER_FACTOR
from flows.dashboard.charts import esc, fmt
from flows.dashboard.data import TYPE_COLUMNS, Run, block_of, linear_type, number, summary_numbers, type_summaries

SHARE_COLUMNS = {"input_outlier_share", "scale_outlier_share", "clip_share"}  # shown as percentages


def cell(value: float | None, share: bool = False) -> str:
    if value is None:
        return '<td class="num" data-v="-1e308">n/a</td>'
    shown = f"{100 * value:.1f}%" if share else fmt(value)
    bar = f'<span class="share" style="width:{min(100.0, 100 * value):.0f}%"></span>' if share else ""
    return f'<td class="num" data-v="{value:.6g}">{bar}{shown}</td>'


def table(headings: list[str], rows: list[str], table_id: str) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headings)
    return f'<table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def config_text(config: dict) -> str:
    """The settings that tell runs apart, in one line."""
    clip = config.get("clip") or {}
    calib = config.get("calibration") or {}
    parts = [
        f"{config.get('method', '?')} w{config.get('w_bit', '?')} g{config.get('group_size', '?')}",
        "zero point" if config.get("zero_point", True) else "symmetric",
        f"scale grid {config.get('n_grid', '?')}" if config.get("method") == "awq" else None,
        (f"clip grid {clip.get('n_grid', '?')}" if clip.get("enabled", True) else "no clip") if config.get("method") == "awq" else None,
        f"calibration {calib.get('source', '?')} {calib.get('n_samples', '?')} x {calib.get('seqlen', '?')}",
        gptq_text(config.get("gptq") or {}) if config.get("method") == "gptq" else str(config.get("version", "")) or None,
    ]  # fmt: skip
    return ", ".join(p for p in parts if p)


def gptq_text(gptq: dict) -> str:
    """GPTQ's settings (the AWQ layout version does not apply to its checkpoints)."""
    parts = [f"damp {gptq.get('damp_percent', 0.01)}", "act-order" if gptq.get("desc_act") else None,
             "static groups" if gptq.get("static_groups") else None,
             "true sequential" if gptq.get("true_sequential", True) else None]  # fmt: skip
    return ", ".join(p for p in parts if p)


def perplexity_text(report: dict) -> list[tuple[str, str]]:
    """(text, "quantized (fp float, +x%)") per evaluation text."""
    floats = report.get("float_perplexity") or {}
    rows = []
    for name, value in (report.get("perplexity") or {}).items():
        if not isinstance(value, (int, float)):
            continue
        fp = floats.get(name)
        rows.append((name, f"{value:.3f}" + (f" (fp {fp:.3f}, {100 * (value / fp - 1):+.1f}%)" if isinstance(fp, (int, float)) and fp else "")))
    return rows


def summary_table(runs: list[Run]) -> str:
    """One column per run."""
    def size(report: dict) -> str:
        q, f = number(report, "size_bytes"), number(report, "float_bytes")
        if q is None:
            return "n/a"
        return f"{q / 1e6:.1f} MB" + (f" (float16 {f / 1e6:.1f} MB, {f / q:.2f}x smaller)" if f else "")

    texts = list(dict.fromkeys(t for run in runs for t, _ in perplexity_text(run.report or {})))
    rows: list[tuple[str, list[str]]] = [
        ("directory", [esc(run.dir) for run in runs]),
        ("state", [esc(run.state) for run in runs]),
        ("model", [esc(run.settings.get("model", "?")) for run in runs]),
        ("settings", [esc(config_text(run.config)) + f"<details><summary>config</summary><pre>{esc(json.dumps(run.config, indent=1))}</pre></details>"
                      for run in runs]),  # fmt: skip
        ("dtype, device", [esc(f"{run.settings.get('dtype', '?')}, {run.settings.get('device', '?')}") for run in runs]),
    ]
    for t in texts:
        rows.append((f"perplexity: {t}", [esc(dict(perplexity_text(run.report or {})).get(t, "n/a")) for run in runs]))
    rows += [
        ("checkpoint size", [esc(size(run.report or {})) for run in runs]),
        ("time", [esc(f"{s:.1f} s") if (s := number(run.report, "seconds")) is not None else "n/a" for run in runs]),
        ("layers", [str(len(run.layers)) for run in runs]),
        ("output error, geo mean", [fmt(summary_numbers(run)["final_geomean"]) for run in runs]),
        ("RTN error, geo mean", [fmt(summary_numbers(run)["rtn_geomean"]) for run in runs]),
    ]
    head = "<th></th>" + "".join(f'<th><span class="swatch s{i}"></span>{esc(run.label)}</th>' for i, run in enumerate(runs))
    body = "".join(f"<tr><th>{esc(name)}</th>" + "".join(f"<td>{v}</td>" for v in values) + "</tr>" for name, values in rows)
    return f'<table class="summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def present_columns(columns, rows_values: list[dict]) -> list:
    """Columns with a value in at least one row: a run without clipping, or without GPTQ, shows none."""
    return [c for c in columns if any(values.get(c[0]) is not None for values in rows_values)]


def type_table(run: Run, types: list[str], table_id: str) -> str:
    summaries = type_summaries(run, types)
    columns = present_columns(TYPE_COLUMNS, [s.values for s in summaries])
    headings = ["linear", "layers"] + [h.replace("5x", f"{OUTLIER_FACTOR:g}x") for _, h, _, _ in columns]
    rows = [f"<tr><td>{esc(s.linear_type)}</td>{cell(float(s.layers))}"
            + "".join(cell(s.values[key], key in SHARE_COLUMNS) for key, _, _, _ in columns) + "</tr>"
            for s in summaries]  # fmt: skip
    return table(headings, rows, table_id)


# Columns of the every-layer table: (metric key, heading).
LAYER_COLUMNS = (
    ("final_error", "output error"),
    ("rtn_error", "RTN error"),
    ("gain", "RTN / final"),
    ("weight_error", "weight error"),
    ("rtn_weight_error", "RTN weight error"),
    ("scale_ratio", "scale ratio r"),
    ("scale_max_over_mean", "scale max/mean"),
    ("scale_outlier_share", "scales > 5x mean"),
    ("input_max_over_mean", "input max/mean"),
    ("input_outlier_share", "input channels > 5x mean"),
    ("clip_ratio_mean", "clip ratio mean"),
    ("clip_ratio_min", "clip ratio min"),
    ("clip_share", "ranges clipped"),
    ("damp", "GPTQ damping"),
    ("gptq_loss", "GPTQ loss"),
    ("seconds", "seconds"),
)


def layer_values(layer: dict) -> dict[str, float | None]:
    values = {key: number(layer, key) for key, _ in LAYER_COLUMNS}
    final, rtn = values["final_error"], values["rtn_error"]
    values["gain"] = rtn / final if final and rtn is not None else None
    return values


def layer_table(run: Run, table_id: str) -> str:
    all_values = [layer_values(l) for l in run.layers]
    columns = present_columns(LAYER_COLUMNS, all_values)
    headings = ["layer", "block", "linear"] + [h.replace("5x", f"{OUTLIER_FACTOR:g}x") for _, h in columns]
    rows = [f"<tr><td>{esc(l['name'])}</td>{cell(float(block_of(l)))}<td>{esc(linear_type(l['name']))}</td>"
            + "".join(cell(v[key], key in SHARE_COLUMNS) for key, _ in columns) + "</tr>"
            for l, v in zip(run.layers, all_values)]  # fmt: skip
    return table(headings, rows, table_id)


def layer_tooltip(layer: dict, run_label: str) -> str:
    """A layer's numbers in a few lines: the tooltip of every chart element that stands for it."""
    v = layer_values(layer)
    lines = [f"{layer['name']} ({run_label})", f"output error {fmt(v['final_error'])}, RTN {fmt(v['rtn_error'])}"]
    if v["weight_error"] is not None:
        lines.append(f"weight error {fmt(v['weight_error'])}, RTN {fmt(v['rtn_weight_error'])}")
    if v["input_max_over_mean"] is not None:
        lines.append(f"input max/mean {fmt(v['input_max_over_mean'])}, outlier channels {100 * (v['input_outlier_share'] or 0):.1f}%")
    if v["scale_max_over_mean"] is not None:
        lines.append(f"scale ratio {fmt(v['scale_ratio'])}, scale max/mean {fmt(v['scale_max_over_mean'])}")
    if v["clip_ratio_mean"] is not None:
        lines.append(f"clip ratio mean {fmt(v['clip_ratio_mean'])}, ranges clipped {100 * (v['clip_share'] or 0):.1f}%")
    if v["damp"] is not None or v["gptq_loss"] is not None:
        lines.append(f"GPTQ damping {fmt(v['damp'])}, loss {fmt(v['gptq_loss'])}")
    return "\n".join(lines)
