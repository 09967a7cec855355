"""The dashboard in a real browser: headless Chromium (Debian's `chromium` package, which .ci/run
installs) loads the static report, runs its script, and draws it; the test counts the chart elements
in the resulting DOM and keeps a screenshot."""
import shutil
import subprocess
import time

import pytest

from flows.dashboard.page import WORST_SHOWN
from flows.dashboard.report import write_report
from page_elements import elements
from synthetic_runs import write_synthetic_run

pytestmark = pytest.mark.browser
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BLOCKS, LINEARS = 32, 7


def chromium() -> str:
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        pytest.fail("no headless Chromium on PATH: install it (`apt-get install -y chromium`, as .ci/run does)")
    return found


def headless(tmp_path, *args: str) -> subprocess.CompletedProcess:
    command = [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}", *args]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    runs = [write_synthetic_run(root / "awq", BLOCKS, "awq"), write_synthetic_run(root / "gptq", BLOCKS, "gptq", seed=1)]
    return write_report(runs, root / "report.html")


def test_charts_render_in_chromium(report, tmp_path):
    start = time.perf_counter()
    dom = headless(tmp_path, "--dump-dom", report.resolve().as_uri()).stdout
    seconds = time.perf_counter() - start
    page = elements(dom)
    layers = BLOCKS * LINEARS
    assert page.classes["rect.cell"] == 3 * layers  # two heatmaps and their comparison
    assert page.classes["rect.bar"] == 2 * WORST_SHOWN
    assert page.classes["rect.rank"] == 2 * layers and page.classes["circle.dot"] == 2 * layers
    assert page.classes["circle.point"] == 3 * BLOCKS
    assert page.classes["svg.chart"] == 3 + 1 + 1 + 1 + 1
    # The script ran under the page's Content-Security-Policy: it marks the tables it made sortable.
    assert page.classes["table.ready"] == page.classes["table.sortable"] == 4
    assert seconds < 30, f"chromium took {seconds:.1f} s to load the page"


def test_screenshot(report, tmp_path):
    shot = tmp_path / "dashboard.png"
    headless(tmp_path, "--window-size=1280,3000", f"--screenshot={shot}", report.resolve().as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 50_000, f"a {len(data)} byte screenshot is too plain to hold the charts"
