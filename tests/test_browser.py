"""One real-browser test: Debian's chromium, driven by Playwright, against `python app.py`."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tiny_weights import make_tiny_weights

CHROMIUM = shutil.which("chromium")
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    weights = make_tiny_weights(tmp_path_factory.mktemp("weights"))
    port = free_port()
    env = dict(os.environ, PLAYGROUND_WEIGHTS=str(weights), GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_ANALYTICS_ENABLED="False")
    log = open(tmp_path_factory.mktemp("log") / "server.log", "w")
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except Exception:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with {process.returncode}; see {log.name}")
            time.sleep(0.25)
    yield url
    process.terminate()
    process.wait(10)


def image_source(page, elem_id):
    return page.locator(f"#{elem_id} img").first.get_attribute("src")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it")
def test_generate_scrub_and_switch_a_skip_off_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(server, wait_until="domcontentloaded")
        expect(page.locator("#skip-0")).to_be_visible(timeout=30_000)  # panel built from the model's introspection

        page.get_by_label("number input for Steps").fill("8")
        page.get_by_label("number input for Steps").press("Tab")
        page.get_by_role("button", name="Generate").click()
        caption = page.locator("#step-caption")
        expect(caption).to_contain_text("finished sample", timeout=60_000)
        final_x0 = image_source(page, "img-A-x0")

        # scrub: drag the step slider back towards the noise
        step = page.get_by_label("number input for Step (0 = pure noise, last = finished sample)")
        step.fill("1")
        step.press("Tab")
        expect(caption).to_contain_text("step 2 of 8", timeout=15_000)
        assert image_source(page, "img-A-x0") != final_x0

        # switch the skips joining at 28x28 off: B changes, A does not
        b_before, a_before = image_source(page, "img-B-x0"), image_source(page, "img-A-x0")
        skip = page.get_by_label("number input for skips joining at 28×28")
        skip.fill("0")
        skip.press("Tab")
        expect(page.locator("#numbers")).to_contain_text("skips at 28×28 × 0", timeout=30_000)
        assert image_source(page, "img-B-x0") != b_before
        assert image_source(page, "img-A-x0") == a_before

        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        browser.close()
