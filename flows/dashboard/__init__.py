"""The per-layer error dashboard: where a quantized model loses accuracy, one page per set of runs.

    data.py      read run directories (plain JSON, tolerant of older and newer records) and aggregate
    charts.py    inline SVG charts: heatmap, bars, lines, dots
    page.py      the page: run summary, charts, tables; every string from a run escaped
    report.py    the page as one static file
    server.py    a loopback HTTP server that re-reads the runs on every request
    commands.py  `awqflow dashboard` and `awqflow report`
"""
