"""`awqflow dashboard RUN_DIR...` (serve the page) and `awqflow report RUN_DIR... -o FILE` (write it)."""
from __future__ import annotations

import argparse
from pathlib import Path

from flows.dashboard.server import DEFAULT_HOST, DEFAULT_PORT


def add_commands(commands) -> None:
    """Add the two subcommands to the `awqflow` parser; each sets `run` to its handler."""
    d = commands.add_parser("dashboard", help="serve a page of per-layer errors of one or more runs (loopback only by default)")
    d.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories; the first is the baseline")
    d.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    d.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    d.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (the page shows paths and model names)")
    d.set_defaults(handler=cmd_dashboard)

    r = commands.add_parser("report", help="write the dashboard page of one or more runs as one static HTML file")
    r.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories; the first is the baseline")
    r.add_argument("-o", "--out", type=Path, default=Path("report.html"), help="the HTML file to write (default report.html)")
    r.set_defaults(handler=cmd_report)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from flows.dashboard.server import make_server, url_of

    server = make_server(args.run_dirs, args.host, args.port, args.allow_remote)
    print(f"awqflow dashboard of {len(args.run_dirs)} run(s): {url_of(server)}  (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from flows.dashboard.report import write_report

    print(f"wrote {write_report(args.run_dirs, args.out)}")
    return 0
