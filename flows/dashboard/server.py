"""A small HTTP server for the dashboard, on the loopback interface unless asked otherwise.

Every request re-reads the run directories, so reloading the page follows a run that is still
going. The page shows file paths and model names, hence loopback by default.
"""
from __future__ import annotations

import ipaddress
import json
import socket
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from flows.dashboard.charts import esc
from flows.dashboard.data import load_runs, run_json
from flows.dashboard.page import CSP, render_page

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to any interface


def check_host(host: str, allow_remote: bool) -> None:
    if not allow_remote and not is_loopback(host):
        raise PermissionError(
            f"refusing to serve the dashboard on {host}: it is not a loopback address and the page shows file paths "
            "and model names; use --host 127.0.0.1 (the default), or pass --allow-remote to serve it to other machines"
        )


def handler_for(run_dirs: list[Path]):
    class DashboardHandler(BaseHTTPRequestHandler):
        server_version = "awqflow-dashboard"

        def do_GET(self):  # noqa: N802 (the http.server API)
            path = self.path.split("?", 1)[0]
            try:
                if path in ("/", "/index.html", "/report.html"):
                    self.reply(HTTPStatus.OK, "text/html; charset=utf-8", render_page(load_runs(run_dirs)))
                elif path == "/data.json":
                    data = [run_json(run) for run in load_runs(run_dirs)]
                    self.reply(HTTPStatus.OK, "application/json", json.dumps(data, allow_nan=False, default=str))
                else:
                    self.reply(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", "not found: the dashboard is at /")
            except Exception as e:  # a damaged or vanished run directory: say so on the page
                message = f"<!DOCTYPE html><title>awqflow dashboard: error</title><p>{esc(type(e).__name__)}: {esc(e)}</p>"
                self.reply(HTTPStatus.INTERNAL_SERVER_ERROR, "text/html; charset=utf-8", message)

        def reply(self, status: HTTPStatus, content_type: str, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Security-Policy", CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # noqa: A002 (the http.server API): quiet, the CLI prints the URL
            pass

    return DashboardHandler


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True  # a browser's open connection never holds up Ctrl-C


class DashboardServer6(DashboardServer):
    address_family = socket.AF_INET6


def make_server(run_dirs: list[str | Path], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                allow_remote: bool = False) -> ThreadingHTTPServer:  # fmt: skip
    """A server for the runs' page (not yet serving: call serve_forever). Port 0 picks a free port.
    Fails before binding when a run directory cannot be read."""
    check_host(host, allow_remote)
    dirs = [Path(d) for d in run_dirs]
    load_runs(dirs)  # fail now, with the reason, rather than on the first request
    server_class = DashboardServer6 if ":" in host else DashboardServer
    return server_class((host.strip("[]"), port), handler_for(dirs))


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
