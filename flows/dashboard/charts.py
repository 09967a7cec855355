"""Inline SVG charts, drawn on the server: no script and nothing fetched to see them.

Every label and tooltip passes through `esc` (names come from model configs and file names). Chart
elements carry a class (`cell`, `bar`, `rank`, `point`, `dot`) so that tests can count them, and a
<title> child, the browser's tooltip.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

# Sequential (low error light, high error dark red: the worst layers stand out) and diverging
# (blue: the second run has less error, red: more) color ramps, from ColorBrewer's YlOrRd and RdBu.
SEQUENTIAL = ("#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#bd0026", "#800026")
DIVERGING = ("#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d", "#b2182b")
# One color per run (Tableau 10's first four): the first run is the baseline of every comparison.
RUN_COLORS = ("#4e79a7", "#e15759", "#59a14f", "#b07aa1")
MISSING = "#e6e6e6"
HEATMAP_TOP, HEATMAP_ROW = 24, 20.0  # px above the first row (block numbers), px a row
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def esc(text) -> str:
    return escape(str(text), quote=True)


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def ramp(colors: tuple[str, ...], t: float) -> str:
    """The color at `t` in [0, 1] along `colors`, linearly interpolated in RGB."""
    t = min(1.0, max(0.0, t)) * (len(colors) - 1)
    i = min(int(t), len(colors) - 2)
    a, b = (tuple(int(c[k : k + 2], 16) for k in (1, 3, 5)) for c in (colors[i], colors[i + 1]))
    return "#" + "".join(f"{round(x + (y - x) * (t - i)):02x}" for x, y in zip(a, b))


@dataclass
class LogScale:
    """Values in [lo, hi] (whole decades) to pixels [a, b]."""

    lo: float
    hi: float
    a: float
    b: float

    @classmethod
    def over(cls, values: list[float], a: float, b: float) -> "LogScale":
        positive = [v for v in values if v is not None and v > 0] or [1.0]
        lo, hi = math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))
        return cls(10.0**lo, 10.0 ** max(hi, lo + 1), a, b)

    def fraction(self, value: float) -> float:
        v = min(max(value, self.lo), self.hi)
        return (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))

    def __call__(self, value: float) -> float:
        return self.a + (self.b - self.a) * self.fraction(value)

    def ticks(self) -> list[float]:
        lo, hi = round(math.log10(self.lo)), round(math.log10(self.hi))
        step = max(1, math.ceil((hi - lo) / 6))  # at most ~6 labeled decades
        return [10.0**e for e in range(lo, hi + 1, step)]


def nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above `value`."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= value)


def svg(width: float, height: float, body: list[str], kind: str, label: str) -> str:
    return (f'<svg class="chart {kind}" role="img" aria-label="{esc(label)}" xmlns="http://www.w3.org/2000/svg" '
            f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" {FONT}>'
            + "".join(body) + "</svg>")  # fmt: skip


def text(x: float, y: float, content, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {extra}>{esc(content)}</text>'


def rect(x: float, y: float, w: float, h: float, fill: str, cls: str, tooltip: str, extra: str = "") -> str:
    return (f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" '
            f'fill="{fill}" {extra}><title>{esc(tooltip)}</title></rect>')  # fmt: skip


def legend_ramp(x: float, y: float, width: float, colors: tuple[str, ...], left: str, right: str, caption: str) -> list[str]:
    steps = 24
    parts = [f'<rect x="{x + width * i / steps:.1f}" y="{y:.1f}" width="{width / steps + 0.5:.1f}" height="10" '
             f'fill="{ramp(colors, i / (steps - 1))}"/>' for i in range(steps)]  # fmt: skip
    parts += [text(x, y + 22, left), text(x + width, y + 22, right, "end"), text(x + width / 2, y - 4, caption, "middle")]
    return parts


@dataclass
class Cell:
    value: float | None  # colored by `color`; None: drawn gray
    tooltip: str


def heatmap(rows: list[str], columns: list[int], cells: dict[tuple[int, str], Cell], color, legend: list[str], label: str) -> str:
    """Rows (linear types) x columns (blocks); `color(value)` colors a cell, `legend` is drawn below."""
    left, top, cell_h = 80, HEATMAP_TOP, HEATMAP_ROW
    cell_w = min(28.0, max(6.0, 880.0 / max(1, len(columns))))
    width = left + cell_w * len(columns) + 20
    height = top + cell_h * len(rows) + 60
    body = [text(left - 6, top + cell_h * r + 14, name, "end") for r, name in enumerate(rows)]
    label_every = max(1, math.ceil(24 / cell_w))  # block numbers at least 24 px apart
    body += [text(left + cell_w * (c + 0.5), top - 6, block, "middle")
             for c, block in enumerate(columns) if c % label_every == 0]  # fmt: skip
    for c, block in enumerate(columns):
        for r, name in enumerate(rows):
            cell = cells.get((block, name))
            if cell is None:
                continue
            fill, cls = (MISSING, "cell-missing") if cell.value is None else (color(cell.value), "cell")
            body.append(rect(left + cell_w * c, top + cell_h * r, cell_w - 1, cell_h - 1, fill, cls, cell.tooltip,
                             f'data-block="{block}" data-type="{esc(name)}"'))  # fmt: skip
    body.append(text(left + cell_w * len(columns) / 2, top + cell_h * len(rows) + 14, "block", "middle"))
    body += legend
    return svg(max(width, 420), height, body, "heatmap", label)


@dataclass
class Series:
    label: str
    color: str
    values: list[float | None]  # one per row / point
    tooltips: list[str]
    markers: list[float | None] | None = None  # a tick per row (e.g. the RTN error), or None
    dashed: bool = False


def hbars(rows: list[str], series: list[Series], axis_label: str, label: str) -> str:
    """Horizontal bars, one group per row (a layer), one bar per series (a run), on a linear axis
    from 0; markers draw a black tick on each bar (the error RTN would have had)."""
    left, top, plot_w = 260, 28, 560
    group_h = max(14.0, 8.0 * len(series) + 6)
    bar_h = (group_h - 4) / len(series)
    height = top + group_h * len(rows) + 40 + 16 * len(series)
    peak = nice_max(max([v for s in series for v in s.values + (s.markers or []) if v is not None] or [1.0]))
    x = lambda v: left + plot_w * v / peak  # noqa: E731
    body = [f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top - 4}" y2="{top + group_h * len(rows):.1f}" stroke="#ddd"/>'
            + text(x(t), top - 8, fmt(t), "middle") for t in (peak * i / 5 for i in range(6))]  # fmt: skip
    for r, row in enumerate(rows):
        y0 = top + group_h * r
        body.append(text(left - 6, y0 + group_h / 2 + 4, row, "end"))
        for k, s in enumerate(series):
            y = y0 + 2 + bar_h * k
            if s.values[r] is not None:
                body.append(rect(left, y, x(s.values[r]) - left, bar_h - 1, s.color, "bar", s.tooltips[r]))
            if s.markers and s.markers[r] is not None:
                mx = x(s.markers[r])
                body.append(f'<line class="marker" x1="{mx:.1f}" x2="{mx:.1f}" y1="{y:.1f}" y2="{y + bar_h - 1:.1f}" '
                            'stroke="#000" stroke-width="2"/>')  # fmt: skip
    bottom = top + group_h * len(rows)
    body.append(text(left + plot_w / 2, bottom + 16, axis_label, "middle"))
    body += series_legend(series, left, bottom + 26)
    return svg(left + plot_w + 40, height, body, "bars", label)


def series_legend(series: list[Series], x: float, y: float) -> list[str]:
    """A swatch and the label of each series, one a line, from (x, y) down."""
    return [f'<rect x="{x:.1f}" y="{y + 16 * k:.1f}" width="10" height="10" fill="{s.color}"/>' + text(x + 14, y + 16 * k + 9, s.label)
            for k, s in enumerate(series)]  # fmt: skip


def log_axis(scale: LogScale, x0: float, x1: float, caption: str) -> list[str]:
    """Horizontal grid lines and labels of a vertical log axis."""
    parts = [f'<line x1="{x0}" x2="{x1}" y1="{scale(t):.1f}" y2="{scale(t):.1f}" stroke="#ddd"/>'
             + text(x0 - 6, scale(t) + 4, f"{t:.0e}", "end") for t in scale.ticks()]  # fmt: skip
    parts.append(text(14, (scale.a + scale.b) / 2, caption, "middle", f'transform="rotate(-90 14 {(scale.a + scale.b) / 2:.1f})"'))
    return parts


def ranked(series: list[Series], axis_label: str, label: str) -> str:
    """Every layer as one thin bar, sorted from the worst: the shape of the error distribution.
    One panel per series, on a shared log axis."""
    left, top, plot_w, panel_h, gap = 70, 16, 820, 110, 26
    scale_values = [v for s in series for v in s.values if v is not None]
    body = []
    for k, s in enumerate(series):
        y0 = top + k * (panel_h + gap)
        scale = LogScale.over(scale_values, y0 + panel_h, y0)
        order = sorted((i for i, v in enumerate(s.values) if v is not None), key=lambda i: -s.values[i])
        bar_w = plot_w / max(1, len(order))
        body += log_axis(scale, left, left + plot_w, axis_label)
        body.append(text(left + plot_w, y0 + 10, f"{s.label}: {len(order)} layers, worst first", "end"))
        for rank, i in enumerate(order):
            y = scale(s.values[i])
            body.append(rect(left + rank * bar_w, y, max(bar_w - (0.5 if bar_w > 3 else 0), 0.6), y0 + panel_h - y, s.color,
                             "rank", s.tooltips[i]))  # fmt: skip
    return svg(left + plot_w + 20, top + len(series) * (panel_h + gap), body, "ranked", label)


def lines(xs: list[int], series: list[Series], x_label: str, y_label: str, label: str) -> str:
    """One line per series over `xs` (blocks), log y; a point per value, with its tooltip."""
    left, top, plot_w, plot_h = 70, 16, 820, 220
    scale = LogScale.over([v for s in series for v in s.values if v is not None], top + plot_h, top)
    x = lambda i: left + (plot_w * (i + 0.5) / max(1, len(xs)))  # noqa: E731
    body = log_axis(scale, left, left + plot_w, y_label)
    label_every = max(1, math.ceil(len(xs) / 40))
    body += [text(x(i), top + plot_h + 14, b, "middle") for i, b in enumerate(xs) if i % label_every == 0]
    body.append(text(left + plot_w / 2, top + plot_h + 30, x_label, "middle"))
    for k, s in enumerate(series):
        points = [(x(i), scale(v), tip) for i, (v, tip) in enumerate(zip(s.values, s.tooltips)) if v is not None]
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        body.append(f'<polyline fill="none" stroke="{s.color}" stroke-width="2"{dash} '
                    f'points="{" ".join(f"{px:.1f},{py:.1f}" for px, py, _ in points)}"/>')  # fmt: skip
        body += [f'<circle class="point" cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{s.color}"><title>{esc(tip)}</title></circle>'
                 for px, py, tip in points]  # fmt: skip
        legend_y = top + 12 + 14 * k
        body.append(f'<line x1="{left + 10}" x2="{left + 34}" y1="{legend_y - 4}" y2="{legend_y - 4}" stroke="{s.color}" '
                    f'stroke-width="2"{dash}/>' + text(left + 40, legend_y, s.label))  # fmt: skip
    return svg(left + plot_w + 20, top + plot_h + 40, body, "lines", label)


def dots(categories: list[str], series: list[Series], per_category: list[list[int]], reference: float | None,
         y_label: str, label: str) -> str:  # fmt: skip
    """One column per category (linear type), one dot per value in it, runs side by side, log y; a
    dashed line at `reference` (the outlier threshold)."""
    left, top, plot_w, plot_h = 70, 16, 820, 220
    values = [v for s in series for v in s.values if v is not None] + ([reference] if reference else [])
    scale = LogScale.over(values, top + plot_h, top)
    col_w = plot_w / max(1, len(categories))
    body = log_axis(scale, left, left + plot_w, y_label)
    if reference:
        body.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{scale(reference):.1f}" y2="{scale(reference):.1f}" '
                    f'stroke="#800026" stroke-dasharray="4 3"/>' + text(left + plot_w, scale(reference) - 4, f"{reference:g}x", "end"))  # fmt: skip
    for c, category in enumerate(categories):
        body.append(text(left + col_w * (c + 0.5), top + plot_h + 14, category, "middle"))
        for k, s in enumerate(series):
            members = per_category[k][c] if per_category else []
            cx0 = left + col_w * c + col_w * (k + 1) / (len(series) + 1)
            for j, i in enumerate(members):
                if s.values[i] is None:
                    continue
                jitter = ((j * 7) % 11 - 5) * min(2.0, col_w / (8 * (len(series) + 1)))  # deterministic spread
                body.append(f'<circle class="dot" cx="{cx0 + jitter:.1f}" cy="{scale(s.values[i]):.1f}" r="3" fill="{s.color}" '
                            f'fill-opacity="0.7"><title>{esc(s.tooltips[i])}</title></circle>')  # fmt: skip
    body += series_legend(series, left + 10, top + 4)
    return svg(left + plot_w + 20, top + plot_h + 24, body, "dots", label)
