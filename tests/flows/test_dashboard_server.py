"""The dashboard's server: loopback only unless asked, serves the page and its data, follows a run."""
import json
import threading
import urllib.error
import urllib.request

import pytest

from awqflow.cli import main
from flows.dashboard.server import check_host, make_server, url_of
from flows.records import LAYERS_FILE
from page_elements import elements
from synthetic_runs import synthetic_layers, write_synthetic_run


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.com", "my-laptop"])
def test_non_loopback_hosts_are_refused_unless_allowed(host):
    with pytest.raises(PermissionError, match="--allow-remote"):
        check_host(host, allow_remote=False)
    check_host(host, allow_remote=True)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "LOCALHOST", "::1", "[::1]"])
def test_loopback_hosts_are_accepted(host):
    check_host(host, allow_remote=False)


def test_cli_refuses_a_public_bind_before_binding(tmp_path, capsys):
    run_dir = write_synthetic_run(tmp_path / "run", 2)
    assert main(["dashboard", str(run_dir), "--host", "0.0.0.0", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "--allow-remote" in err and "0.0.0.0" in err and "Traceback" not in err


def fetch(url: str) -> tuple[int, dict, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


@pytest.fixture
def served(tmp_path):
    """Two runs served on a free loopback port from a background thread."""
    a = write_synthetic_run(tmp_path / "a", 4, "awq")
    b = write_synthetic_run(tmp_path / "b", 4, "rtn", layers=synthetic_layers(2, "rtn"), complete=False)
    server = make_server([a, b], "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield url_of(server), a, b
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_server_serves_the_page_and_follows_a_running_run(served):
    url, a, b = served
    assert url.startswith("http://127.0.0.1:")
    status, headers, body = fetch(url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert elements(body).classes["rect.rank"] == 4 * 7 + 2 * 7
    status, _, data = fetch(url + "data.json")
    runs = json.loads(data)
    assert status == 200 and [len(r["layers"]) for r in runs] == [28, 14] and runs[1]["state"] == "1/4 blocks"
    with open(b / LAYERS_FILE, "a") as f:  # the run finishes another block: a reload shows it
        for row in synthetic_layers(3, "rtn")[14:]:
            f.write(json.dumps(row) + "\n")
    assert elements(fetch(url)[2]).classes["rect.rank"] == 4 * 7 + 3 * 7
    assert fetch(url + "nothing-here")[0] == 404


def test_server_reports_a_damaged_run_on_the_page(served):
    url, a, _ = served
    (a / LAYERS_FILE).write_text("{not json\n{}\n")
    status, _, body = fetch(url)
    assert status == 500 and "line 1 is not JSON" in body
