"""One real-browser test: Debian's chromium, driven by Playwright, against `python app.py`."""

import os
import re
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


def drawn(page, network):
    """What the viewer's canvas of network "a", "b" or "d" (A − B) shows now, as a PNG data URL."""
    return page.evaluate(f"document.querySelector('#viewer figure[data-net={network}] canvas').toDataURL()")


def toasts(page):
    """The texts of the toasts on the page, so a failing check says which error the app showed."""
    return page.locator(".toast-body").all_inner_texts()


def open_browser(playwright, width=1440, height=900):
    """Debian's chromium, headless, at a desktop's size."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-background-networking"])
    return browser, browser.new_page(viewport={"width": width, "height": height})


def queue_requests(page):
    """The event requests the page sends from now on (Gradio's queue/join and unqueued run/predict posts)."""
    sent = []
    page.on("request", lambda request: sent.append(request.url)
            if request.method == "POST" and ("/queue/join" in request.url or "/run/" in request.url) else None)
    return sent


def wait_for_run(page, expect, timeout=60_000):
    """The page's run is in: the verdicts name A and B, and the viewer is not waiting for a newer one."""
    expect(page.locator("#verdicts")).to_contain_text("intact", timeout=timeout)
    expect(page.locator("#viewer")).not_to_have_class(re.compile("waiting"), timeout=timeout)


def opened_on_its_run(playwright, server, height=900):
    """A page of the app at 1440 px wide, once the run it opens on is in."""
    from playwright.sync_api import expect

    browser, page = open_browser(playwright, height=height)
    page.goto(server, wait_until="domcontentloaded")
    wait_for_run(page, expect)
    return browser, page


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it")


@needs_chromium
def test_the_first_screen_holds_the_diagram_the_pictures_and_the_scrubber(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser, page = opened_on_its_run(p, server)
        for selector in ("#viewer figure[data-net=a] canvas", "#viewer figure[data-net=b] canvas", "#viewer .uv-scrubber",
                         "#diagram svg", "#generate"):
            box = page.locator(selector).first.bounding_box()
            assert box is not None and box["y"] + box["height"] <= 900, f"{selector} is below the fold: {box}"
        # 28 px digits at least 4× (a 2×2 grid of 28 px and its padding is 58 px)
        assert page.locator("#viewer figure[data-net=a] canvas").bounding_box()["width"] >= 4 * 58
        assert page.locator("img:not([src])").count() == 0  # no broken-image placeholder anywhere
        assert toasts(page) == []
        browser.close()


@needs_chromium
def test_scrubbing_redraws_in_the_page_and_the_feature_maps_follow_arrow_keys(server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser, page = opened_on_its_run(p, server)
        expect(page.locator("#feature-caption")).to_contain_text("t = 0 ·", timeout=30_000)  # the finished run's last step
        caption, before = page.locator("#viewer .uv-caption"), drawn(page, "a")
        expect(caption).to_contain_text("the finished sample")
        sent = queue_requests(page)
        scrubber = page.locator("#viewer .uv-scrubber")
        scrubber.focus()
        for _ in range(3):
            scrubber.press("ArrowLeft")
        # the pictures and the caption follow at once, from frames already in the page: no request while scrubbing
        expect(caption).to_contain_text("step 48 of 50")
        assert drawn(page, "a") != before and sent == []
        # once the scrubber rests, the step reaches the server once, and the open block's maps follow it
        timestep = re.search(r"t = (\d+)", caption.inner_text()).group(1)
        expect(page.locator("#feature-caption")).to_contain_text(f"t = {timestep} ·", timeout=30_000)
        assert len(sent) == 1
        expect(page.locator("#step input")).to_have_value("47")  # what later events read the step from
        # a click on the curve strip moves the scrubber
        strip = page.locator("#viewer .uv-curve").bounding_box()
        page.mouse.click(strip["x"] + 2, strip["y"] + strip["height"] / 2)
        expect(caption).to_contain_text("step 1 of 50")
        expect(caption).to_contain_text("first guess")
        assert toasts(page) == []
        browser.close()


@needs_chromium
def test_a_typed_skip_and_a_diagram_click_rerun_b_while_the_pictures_stay(server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser, page = opened_on_its_run(p, server)
        a_before, b_before = drawn(page, "a"), drawn(page, "b")
        verdicts = page.locator("#verdicts")

        # typed and confirmed with Enter: B reruns with it, and the diagram draws the skip cut
        skip = page.get_by_label("number input for skips joining at 28×28")
        skip.fill("0")
        skip.press("Enter")
        # while B reruns, A and the old B stay on screen, dimmed
        assert page.locator("#viewer figure[data-net=a] canvas").is_visible()
        expect(verdicts).to_contain_text("skips at 28×28 × 0", timeout=30_000)
        expect(page.locator('#diagram [data-kind="skip"][data-resolution="28"]').first).to_have_attribute("data-off", "true")
        wait_for_run(page, expect)
        assert drawn(page, "a") == a_before and drawn(page, "b") != b_before

        # a click on the diagram's skip arc restores it, and the slider shows what B ran with
        page.locator('#diagram [data-kind="skip"][data-resolution="28"]').first.click()
        expect(verdicts).to_contain_text("nothing switched off", timeout=30_000)
        expect(skip).to_have_value("1")
        # an attention dot switches that site off in B
        page.locator('#diagram [data-kind="attention"]').first.click()
        expect(verdicts).to_contain_text("attention down_blocks.1.attentions.0 off", timeout=30_000)
        # a block on the diagram opens its maps
        page.locator('#diagram [data-kind="block"][data-name="mid_block.resnets.1"]').first.click()
        expect(page.locator("#feature-caption")).to_contain_text("mid_block.resnets.1", timeout=30_000)
        assert toasts(page) == []
        browser.close()


@needs_chromium
def test_a_new_generate_supersedes_the_running_one_and_stop_stops_it(server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser, page = opened_on_its_run(p, server)
        steps = page.get_by_label("number input for Steps")
        # a long run, then another Generate at once: the page ends on the second one's frames, with no error
        steps.fill("600")
        steps.press("Tab")
        page.get_by_role("button", name="Generate").click()
        steps.fill("7")
        steps.press("Tab")
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#viewer .uv-scrubber")).to_have_attribute("max", "7", timeout=60_000)
        wait_for_run(page, expect)
        page.locator("#viewer .uv-scrubber").press("ArrowLeft")
        expect(page.locator("#viewer .uv-caption")).to_contain_text("step 7 of 7", timeout=10_000)
        # a long run stopped: the pictures of the run before come back, undimmed, and nothing says "Error"
        before = drawn(page, "a")
        steps.fill("600")
        steps.press("Tab")
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#viewer")).to_have_class(re.compile("waiting"))
        page.get_by_role("button", name="Stop").click()
        expect(page.locator("#viewer")).not_to_have_class(re.compile("waiting"), timeout=10_000)
        assert drawn(page, "a") == before and toasts(page) == []
        browser.close()


@needs_chromium
def test_a_bad_seed_gets_one_toast_naming_the_seed_and_the_pictures_stay(server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser, page = opened_on_its_run(p, server)
        before = drawn(page, "a")
        seed = page.get_by_label("Seed")
        seed.fill("-5")
        seed.press("Tab")
        page.get_by_role("button", name="Generate").click()
        expect(page.locator(".toast-body")).to_have_count(1, timeout=30_000)
        assert "seed must be" in toasts(page)[0] and "-5" in toasts(page)[0]
        expect(page.locator("#viewer")).not_to_have_class(re.compile("waiting"), timeout=10_000)
        assert drawn(page, "a") == before
        browser.close()


def set_number(page, label, value):
    box = page.get_by_label(f"number input for {label}")
    box.fill(str(value))
    box.press("Enter")


@needs_chromium
def test_lesson_window_lie_freeu_hspace_sweep_decision_export_and_query_setup_in_a_real_browser(server, tmp_path):
    import json
    import urllib.parse

    from playwright.sync_api import expect, sync_playwright

    # the waits are generous because this machine is shared with training runs; they cost nothing when it is idle
    with sync_playwright() as p:
        browser, page = open_browser(p, height=1800)

        # ?lesson=skips opens the app in that lesson: its question and what to look for, every skip at 0, a finished run
        page.goto(server + "?lesson=skips", wait_until="domcontentloaded")
        expect(page.locator("#lesson-note")).to_contain_text("What skips do", timeout=60_000)
        wait_for_run(page, expect, timeout=180_000)
        expect(page.get_by_label("number input for skips joining at 28×28")).to_have_value("0")
        verdicts = page.locator("#verdicts")
        expect(verdicts).to_contain_text("skips at 28×28 × 0")

        # B's skips off only while t <= 400: B reruns, and the verdicts say so
        page.get_by_role("tab", name="B over time").click()
        expect(page.get_by_label("number input for Ablation window: to t")).to_have_value("999")
        b_before = drawn(page, "b")
        set_number(page, "Ablation window: to t", 400)
        expect(verdicts).to_contain_text("only for 0 ≤ t ≤ 400", timeout=120_000)
        wait_for_run(page, expect)
        assert drawn(page, "b") != b_before

        # the other ways to change B over time: a timestep lie, FreeU's preset, an h-space direction
        page.get_by_text("offset: tell t + value").click()
        expect(verdicts).to_contain_text("told t' = t +300", timeout=120_000)
        page.get_by_role("tab", name="FreeU").click()
        page.get_by_role("button", name="FreeU preset").click()
        expect(verdicts).to_contain_text("FreeU b =", timeout=120_000)
        page.get_by_role("tab", name="h-space").click()
        page.get_by_text("Add an h-space direction to B").click()
        expect(verdicts).to_contain_text("h-space PC0", timeout=120_000)

        # the sweep: a curve and a table of windows
        page.get_by_role("tab", name="When does it matter?").click()
        set_number(page, "Windows", 3)
        page.get_by_role("button", name="When does it matter? (sweep the window over t)").click()
        expect(page.locator("#sweep-table")).to_contain_text("Applied at every step", timeout=180_000)
        expect(page.locator("#sweep-plot img")).to_be_visible()

        # when does the digit decide: the plots and a decided step per sample
        page.get_by_role("tab", name="When does the digit decide?").click()
        page.get_by_role("button", name="When does the digit decide?").click()
        expect(page.locator("#decision-table")).to_contain_text("A decided at t", timeout=120_000)
        expect(page.locator("#decision-plot img")).to_be_visible()
        expect(page.locator("#probability-b img")).to_be_visible()
        page.screenshot(path=str(tmp_path / "explore.png"), full_page=True)

        # export: the session's trajectory as safetensors
        page.get_by_role("tab", name="Share and export").click()
        page.get_by_role("button", name="Download tensors (.safetensors)").click()
        expect(page.locator("#export-file")).to_contain_text(".safetensors", timeout=60_000)

        # a lesson: its question first, and only Reveal runs it
        page.get_by_role("tab", name="Lessons").click()
        page.locator("#lesson input").click()
        page.get_by_role("option", name="What time conditioning does").click()
        expect(page.locator("#lesson-note")).to_contain_text("Predict first", timeout=30_000)
        assert "time embedding off" not in verdicts.inner_text()
        page.get_by_role("button", name="Reveal: run it").click()
        expect(page.locator("#lesson-note")).to_contain_text("What to look for", timeout=60_000)
        expect(verdicts).to_contain_text("time embedding off", timeout=180_000)

        # ?setup=<JSON> opens the app in that state, with what follows its model (here one trained without skips):
        # the trained note and the opening block's maps; the setup box shows it back after the run
        setup = {"model": "tiny-noskip", "seed": 7, "steps": 5, "batch": 2, "digit": 4, "ablation": {"skip_scale": {"14": 0.5}}}
        page.goto(server + "?setup=" + urllib.parse.quote(json.dumps(setup)), wait_until="domcontentloaded")
        wait_for_run(page, expect, timeout=180_000)
        expect(page.get_by_label("number input for skips joining at 14×14")).to_have_value("0.5")
        expect(page.locator("#trained-note")).to_contain_text("was trained with skips at 28×28 × 0")
        expect(page.locator("#feature-caption")).to_contain_text("mid_block.attentions.0", timeout=60_000)
        page.get_by_role("tab", name="Share and export").click()
        expect(page.locator("#setup-json textarea")).to_have_value(re.compile('"seed": 7'), timeout=60_000)
        page.get_by_role("button", name="Copy link").click()
        expect(page.locator("#copy-link")).to_have_attribute("data-link", re.compile(r"\?setup=%7B"))

        # a broken setup in the address is refused in a toast, and the page still opens on its defaults' run
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(server + "?setup=%7Bnot%20json", wait_until="domcontentloaded")
        expect(page.locator(".toast-body").first).to_contain_text("setup", timeout=60_000)
        wait_for_run(page, expect)
        browser.close()


@needs_chromium
def test_a_pixel_clicked_in_b_shows_its_filter_and_opens_that_sample(server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser, page = opened_on_its_run(p, server, height=1400)
        page.get_by_role("tab", name="Causal experiments").click()
        page.get_by_role("tab", name="Filter at a pixel").click()
        page.locator("#viewer figure[data-net=b] canvas").scroll_into_view_if_needed()
        canvas = page.locator("#viewer figure[data-net=b] canvas").bounding_box()
        # the bottom-right sample of the 2×2 grid, near its centre
        page.mouse.click(canvas["x"] + canvas["width"] * 0.75, canvas["y"] + canvas["height"] * 0.75)
        expect(page.locator("#filter-note")).to_contain_text("Filter width", timeout=30_000)
        expect(page.locator("#filter-a img")).to_be_visible()
        expect(page.get_by_label("number input for Sample (or click one in A or B)")).to_have_value("3")
        assert toasts(page) == []
        browser.close()


@needs_chromium
def test_a_digit_drawn_on_the_sketchpad_is_classified_and_drawn_again(server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser, page = opened_on_its_run(p, server, height=1400)
        page.get_by_role("tab", name="Causal experiments").click()
        page.get_by_role("tab", name="Your own digit").click()
        # an empty drawing is answered by name
        page.get_by_role("button", name=re.compile("Which digit is it")).click()
        expect(page.locator(".toast-body").first).to_contain_text("drawing: it is empty", timeout=30_000)
        page.locator('#sketch button[aria-label="Brush"]').click()
        canvas = page.locator("#sketch canvas").first
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y - 60)
        page.mouse.down()
        page.mouse.move(x, y + 60, steps=15)
        page.mouse.up()
        page.get_by_role("button", name=re.compile("Which digit is it")).click()
        expect(page.locator("#drawing-note")).to_contain_text("A reads it as", timeout=60_000)
        page.get_by_role("button", name=re.compile("Invert it")).click()
        expect(page.locator("#drawing-note")).to_contain_text("Mean |again − yours|", timeout=120_000)
        expect(page.locator("#drawing-again img")).to_be_visible()
        browser.close()
