"""The report and the dashboard in a real headless Debian chromium; screenshots go to artifacts/."""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian chromium at /usr/bin/chromium (.ci/run installs it)")
    pytest.skip("Debian chromium is not installed (apt-get install -y chromium)", allow_module_level=True)

from playwright.sync_api import Page, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    yield page
    page.close()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_report_renders_every_plot_without_script_errors(cli, small_study, mnist_dir, tmp_path, page) -> None:
    url, name = small_study
    cli(
        "evaluate",
        "--study",
        name,
        "--storage",
        url,
        "--data-dir",
        mnist_dir,
        "--rounds",
        "3",
        "--pairs",
        "100",
        "--epochs",
        "1",
        "--threads",
        "1",
    )
    out = tmp_path / "report.html"
    assert cli("report", "--study", name, "--storage", url, "--out", out).exit_code == 0
    expected = out.read_text().count('class="plotly-graph-div"')
    page.goto(out.as_uri())
    page.wait_for_function(
        f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {expected}", timeout=60_000
    )
    plots = page.locator(".js-plotly-plot")
    assert plots.count() == expected == 7
    for i in range(expected):
        assert plots.nth(i).locator(".main-svg").count() >= 1
        assert plots.nth(i).bounding_box()["height"] > 100
    assert page.locator("text=Weight sharing x auxiliary loss").count() == 1
    assert page.locator("h2", has_text="Evaluation on test pairs").count() == 1
    screenshot(page, "report.png")
    assert page.errors == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_lists_the_study_and_opens_it_with_its_evaluation(cli, small_study, mnist_dir, page) -> None:
    url, name = small_study
    cli(
        "evaluate",
        "--study",
        name,
        "--storage",
        url,
        "--data-dir",
        mnist_dir,
        "--rounds",
        "2",
        "--pairs",
        "100",
        "--epochs",
        "1",
        "--threads",
        "1",
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", "dashboard", "--storage", url, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()
        assert f"open http://127.0.0.1:{port}/dashboard" in line, (line, proc.poll())
        _wait_for_port(port)
        page.goto(f"http://127.0.0.1:{port}/dashboard")
        link = page.get_by_text(re.compile(rf"^\d+\. {name}$")).first  # the study list: "1. small"
        link.wait_for(timeout=60_000)
        link.click()
        page.wait_for_url("**/dashboard/studies/*", timeout=60_000)
        page.get_by_text(re.compile(rf"^{name} \(id=\d+\)$")).first.wait_for(timeout=60_000)
        page.get_by_text("Best Trial").first.wait_for(timeout=60_000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        page.get_by_text("Study User Attributes").wait_for(timeout=60_000)
        # The attributes table shows 5 rows a page; a study may hold more.
        for _ in range(5):
            if page.get_by_text("evaluation", exact=True).count() >= 1:
                break
            page.locator("button:has([data-testid='KeyboardArrowRightIcon'])").last.click()
        assert page.get_by_text("evaluation", exact=True).count() >= 1
        page.wait_for_timeout(1000)  # let the plots finish drawing before the screenshot
        screenshot(page, "dashboard.png")
        assert page.errors == []
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")
