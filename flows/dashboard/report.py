"""The dashboard page as one static HTML file: `awqflow report`, and every finished flow run."""
from __future__ import annotations

import os
from pathlib import Path

from flows.dashboard.data import load_runs
from flows.dashboard.page import render_page

REPORT_HTML = "report.html"  # in the run directory


def write_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Render the runs' page into `out` (replaced atomically: a browser never sees half a page)."""
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a directory: give the report a file name, e.g. {out / 'report.html'}")
    page = render_page(load_runs(run_dirs))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
