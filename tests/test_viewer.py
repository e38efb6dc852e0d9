"""The step viewer: its payload decoded back to pixels, and the panel driven in Chromium.

The unit tests build trajectories of random tensors (no model), decode the PNG sheets with PIL and compare
pixels with the grey or diverging colour the value should have. The browser tests launch a small app holding
the viewer, the hidden step Number and a Textbox the handlers write, and check that scrubbing draws without
the server, that the step reaches Python once it settles, that busy dims without blanking, and the curve strip.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from explainer import viewer
from explainer.viewer import DIVERGING_PALETTE, build_viewer, frames_payload
from playground.sampling import SampleSettings, Trajectory
from playground.viz import DIVERGING, colour_table, grey

CHROMIUM = "/usr/bin/chromium"


def fake_run(steps=3, batch=2, channels=1, size=5, seed=0, noise=None) -> Trajectory:
    """A trajectory of random tensors; x̂0 reaches past ±1, as at the noisy steps, so clipping shows."""
    generator = torch.Generator().manual_seed(seed)
    x_t = torch.randn((steps + 1, batch, channels, size, size), generator=generator) * 0.8
    if noise is not None:
        x_t[0] = noise  # A and B start from the same noise
    return Trajectory(settings=SampleSettings(steps=steps, batch=batch), model_name="fake",
                      timesteps=torch.linspace(999, 0, steps).round().long(), x_t=x_t,
                      eps=torch.randn((steps, batch, channels, size, size), generator=generator),
                      x0=torch.randn((steps, batch, channels, size, size), generator=generator) * 1.5, features={})


def pair(**kwargs) -> tuple[Trajectory, Trajectory]:
    a = fake_run(seed=0, **kwargs)
    return a, fake_run(seed=1, noise=a.x_t[0], **kwargs)


def decode(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))


def pixel(payload, network, kind, position, sample, y, x):
    """The sheet's pixel for (position, sample, y, x), read through the layout the payload describes."""
    image = decode(payload["sheets"][network][kind])
    grid, layout = payload["grid"], payload["sheet"]
    (tile_width, tile_height), pad, columns = grid["tile"], grid["pad"], grid["columns"]
    frame_width, _ = layout["frame"]
    per_column = layout["frames_per_column"]
    row_in_frame = (sample // columns) * (tile_height + pad) + y
    column = (position // per_column) * frame_width + (sample % columns) * (tile_width + pad) + x
    return image.convert("RGB" if image.mode == "P" else image.mode).getpixel((column, row_in_frame * per_column + position % per_column))


def diverging_colour(value: float, vmax: float) -> tuple[int, ...]:
    """The colour a signed value should get: matplotlib's RdBu_r table, zero on its centre entry 127."""
    index = int(np.clip(np.rint((value / vmax + 1) * 127), 0, 254))
    return tuple(int(c) for c in colour_table(DIVERGING)[index if index < 128 else index + 1])


def at(run, kind, position):
    """What position `position` shows of `kind` (position S: the finished sample, the last step's ε̂)."""
    if kind == "xt":
        return run.x_t[position]
    if kind == "x0":
        return run.final if position == len(run) else run.x0[position]
    return run.eps[min(position, len(run) - 1)]


def test_grey_sheets_hold_each_steps_image_of_each_sample_clipped_to_minus_one_plus_one():
    a, b = pair(steps=3, batch=3)
    payload = frames_payload(a, b)
    assert decode(payload["sheets"]["a"]["x0"]).mode == "L"
    for network, run in (("a", a), ("b", b)):
        for kind in ("x0", "xt"):
            for position, sample, y, x in ((0, 0, 0, 0), (1, 2, 4, 3), (3, 1, 2, 4)):  # 3: the finished sample
                expected = int(grey(at(run, kind, position)[sample, 0, y, x]))
                assert pixel(payload, network, kind, position, sample, y, x) == expected, (network, kind, position)


def test_signed_sheets_use_the_diverging_map_with_a_shared_eps_range_and_one_range_per_difference():
    a, b = pair(steps=4, batch=2)
    payload = frames_payload(a, b)
    for position in range(5):
        eps_range = max(float(at(a, "eps", position).abs().max()), float(at(b, "eps", position).abs().max()))
        assert payload["ranges"]["eps"][position] == pytest.approx(eps_range, rel=1e-3)
        for network, run in (("a", a), ("b", b)):
            value = float(at(run, "eps", position)[1, 0, 3, 2])
            assert pixel(payload, network, "eps", position, 1, 3, 2) == diverging_colour(value, eps_range)
        for kind in ("x0", "xt", "eps"):
            difference = at(a, kind, position) - at(b, kind, position)
            vmax = max(float(difference.abs().max()), 1e-3)
            assert payload["ranges"]["a_minus_b"][kind][position] == pytest.approx(vmax, rel=1e-3)
            assert pixel(payload, "a_minus_b", kind, position, 0, 1, 4) == diverging_colour(float(difference[0, 0, 1, 4]), vmax)


def test_the_palette_puts_zero_on_the_maps_centre_the_range_on_its_ends_and_pads_in_white():
    table = colour_table(DIVERGING)
    assert (DIVERGING_PALETTE[viewer.diverging_index(np.array([0.0, -2.0, 2.0, 9.0]), 2.0)] == table[[127, 0, 255, 255]]).all()
    assert tuple(DIVERGING_PALETTE[viewer.PAD_INDEX]) == (255, 255, 255)
    a, b = pair(steps=2, batch=2)
    sheet = decode(frames_payload(a, b)["sheets"]["a_minus_b"]["eps"]).convert("RGB")
    assert sheet.getpixel((5, 0)) == (255, 255, 255)  # the column between the two samples


def test_identical_steps_floor_the_difference_range_and_the_drift_curves_follow_the_steps():
    a, b = pair(steps=3, batch=2)
    payload = frames_payload(a, b)
    assert payload["ranges"]["a_minus_b"]["xt"][0] == 1e-3  # the same noise: A − B is zero at the first input
    assert payload["drift"]["xt"][0] == 0
    for position in range(4):
        assert payload["drift"]["x0"][position] == pytest.approx(float((at(a, "x0", position) - at(b, "x0", position)).abs().mean()), rel=1e-3)
        assert payload["drift"]["xt"][position] == pytest.approx(float((a.x_t[position] - b.x_t[position]).abs().mean()), rel=1e-3)
    assert payload["timesteps"] == a.timesteps.tolist() and payload["steps"] == 3 and payload["step"] == 3


def test_b_is_a_sends_one_set_of_sheets_and_no_differences():
    a, b = pair(steps=3, batch=2)
    same = frames_payload(a, a)
    assert same["b_is_a"] is True and not frames_payload(a, b)["b_is_a"]
    assert list(same["sheets"]) == ["a"]
    for kind in ("x0", "xt"):  # (ε̂ is not: A's ε̂ shares its range with B's)
        assert same["sheets"]["a"][kind] == frames_payload(a, b)["sheets"]["a"][kind]
    assert set(same["drift"]["x0"]) == {0.0} and set(same["ranges"]["a_minus_b"]["x0"]) == {1e-3}
    assert len(json.dumps(same)) < 0.5 * len(json.dumps(frames_payload(a, b)))


def test_the_payload_is_json_and_says_where_the_scrubber_starts():
    a, b = pair(steps=5, batch=4)
    payload = frames_payload(a, b, step=2)
    assert json.loads(json.dumps(payload)) == payload
    assert payload["step"] == 2 and frames_payload(a, b, step=99)["step"] == 5
    assert payload["grid"] == {"columns": 2, "pad": 1, "tile": [5, 5]}  # four samples: two by two
    assert frames_payload(a, b, columns=4)["grid"]["columns"] == 4


def test_rgb_images_travel_as_rgb_and_signed_kinds_as_the_mean_over_channels():
    a, b = pair(steps=2, batch=2, channels=3, size=4)
    payload = frames_payload(a, b)
    assert decode(payload["sheets"]["a"]["xt"]).mode == "RGB" and "mean over the 3" in payload["signed"]
    assert pixel(payload, "b", "xt", 1, 1, 2, 3) == tuple(int(v) for v in grey(b.x_t[1, 1, :, 2, 3]))
    mean_eps = a.eps[0, 0, :, 1, 1].mean()
    eps_range = max(float(a.eps[0].mean(1).abs().max()), float(b.eps[0].mean(1).abs().max()))
    assert pixel(payload, "a", "eps", 0, 0, 1, 1) == diverging_colour(float(mean_eps), eps_range)


def test_long_runs_wrap_the_sheet_into_column_blocks(monkeypatch):
    monkeypatch.setattr(viewer, "MAX_SHEET_SIDE", 3 * 5)  # three frames of 5 px a column block
    a, b = pair(steps=6, batch=1)
    payload = frames_payload(a, b)
    assert payload["sheet"] == {"frame": [5, 5], "frames_per_column": 3}
    assert decode(payload["sheets"]["a"]["xt"]).size == (3 * 5, 3 * 5)
    for position in (0, 4, 6):
        assert pixel(payload, "a", "xt", position, 0, 2, 1) == int(grey(a.x_t[position, 0, 0, 2, 1]))


def test_a_and_b_must_match():
    with pytest.raises(ValueError, match="same steps"):
        frames_payload(fake_run(steps=3), fake_run(steps=4))


# ---- in the browser

pytestmark_browser = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium at /usr/bin/chromium")
SETTLE_MS = 600  # long enough that no step event can fall inside a burst of key presses on a busy machine


@pytest.fixture(scope="module")
def served():
    runs = {"run": pair(steps=50, batch=4, size=28), "long": pair(steps=200, batch=1, size=28)}
    a, b = runs["run"]
    payloads = {"run": frames_payload(a, b), "same": frames_payload(a, a)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(viewer, "MAX_SHEET_SIDE", 28 * 64)  # 64 frames a column block: the long run takes four
        payloads["long"] = frames_payload(*runs["long"])
    assert payloads["long"]["sheet"]["frames_per_column"] == 64
    with gr.Blocks() as demo:
        step = gr.Number(visible="hidden", elem_id="step", precision=0)
        panel = build_viewer(elem_id="viewer", step_elem_id="step", settle_ms=SETTLE_MS)
        log = gr.Textbox(elem_id="log")
        gr.Button("load", elem_id="load").click(lambda: payloads["run"], None, panel, show_progress="hidden")
        gr.Button("long", elem_id="long").click(lambda: payloads["long"], None, panel, show_progress="hidden")
        gr.Button("read", elem_id="read").click(lambda s: f"read {int(s)}", step, log)
        gr.Button("busy", elem_id="busy").click(lambda: gr.update(busy=True), None, panel, queue=False, show_progress="hidden")
        gr.Button("same", elem_id="same").click(lambda: gr.update(value=payloads["same"], busy=False), None, panel,
                                                show_progress="hidden")

        def stepped(evt: gr.EventData):
            return f"step {evt._data['step']}"

        def sampled(evt: gr.EventData):
            return f"sample {evt._data['index']}"

        panel.step(stepped, None, log)
        panel.sample(sampled, None, log)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    yield url, runs
    demo.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(served, browser):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.requests = []
    page.on("request", lambda r: page.requests.append(r.url) if r.method == "POST" and "/gradio_api/" in r.url else None)
    page.goto(served[0])
    expect(page.locator("#viewer .uv")).to_have_attribute("data-state", "empty", timeout=30_000)
    page.click("#load")
    expect(page.locator("#viewer .uv")).to_have_attribute("data-state", "run", timeout=30_000)
    yield page
    page.close()


def picture(page, net="a"):
    return page.evaluate(f"""() => {{ const c = document.querySelector('#viewer [data-net={net}] canvas');
        return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.join(','); }}""")


def drawn(page, net, frame_width, left, top):
    """The RGB the canvas shows for pixel (left, top) of the frame, read from the middle of its block."""
    return page.evaluate("""([net, frameWidth, left, top]) => {
        const c = document.querySelector(`#viewer [data-net=${net}] canvas`), zoom = c.width / frameWidth;
        return [...c.getContext('2d').getImageData(Math.floor((left + 0.5) * zoom), Math.floor((top + 0.5) * zoom), 1, 1).data].slice(0, 3);
    }""", [net, frame_width, left, top])


def go_to(page, position):
    page.evaluate("""(k) => { const s = document.querySelector('#viewer .uv-scrubber');
        s.value = k; s.dispatchEvent(new Event('input', {bubbles: true})); }""", position)


def wait_for_opacity(page, net, opacity):
    """The figure's opacity once its CSS transition is over."""
    page.wait_for_function(f"getComputedStyle(document.querySelector('#viewer [data-net={net}]')).opacity === '{opacity}'",
                           timeout=5_000)


def caption(page):
    return page.inner_text("#viewer .uv-caption").replace("\n", " ")


@pytestmark_browser
def test_the_empty_viewer_shows_a_note_and_no_picture(served, browser):
    page = browser.new_page()
    page.goto(served[0])
    page.wait_for_selector("#viewer .uv-empty", state="visible", timeout=30_000)
    assert not page.locator("#viewer canvas").first.is_visible()
    page.close()


@pytestmark_browser
def test_scrubbing_redraws_from_the_sheets_then_the_settled_step_reaches_python(page):
    from playwright.sync_api import expect

    assert caption(page).startswith("the finished sample")
    before, requests_before = picture(page), len(page.requests)
    scrubber = page.locator("#viewer .uv-scrubber")
    scrubber.focus()
    page.keyboard.press("ArrowLeft")
    assert picture(page) != before and caption(page).startswith("step 50 of 50 · t = 0")
    for _ in range(3):
        page.keyboard.press("ArrowLeft")
    assert caption(page).startswith("step 47 of 50")
    page.wait_for_timeout(SETTLE_MS // 3)
    assert page.requests[requests_before:] == []  # all of the scrub so far was drawn without the server
    expect(page.locator("#log textarea")).to_have_value("step 46", timeout=15_000)  # scrubber position 46
    assert len(page.requests) == requests_before + 1  # one step event, once the scrubber settled
    page.click("#read")
    expect(page.locator("#log textarea")).to_have_value("read 46", timeout=15_000)  # the hidden Number carried it


@pytestmark_browser
def test_scrub_redraw_time(page):
    page.evaluate("""() => { const controls = document.querySelector('#viewer .uv-controls'); window.redraws = [];
        controls.addEventListener('input', () => { window.redrawStart = performance.now(); }, true);
        window.addEventListener('input', (event) => {  // (the hidden Number's own input event bubbles here too)
          if (event.target.matches('.uv-scrubber')) window.redraws.push(performance.now() - window.redrawStart); }); }""")
    page.locator("#viewer .uv-scrubber").focus()
    for _ in range(50):
        page.keyboard.press("ArrowLeft")
    times = sorted(page.evaluate("window.redraws"))
    assert len(times) == 50 and caption(page).startswith("step 1 of 50")
    print(f"\nscrub redraw over {len(times)} ArrowLeft presses: median {times[len(times) // 2]:.2f} ms, "
          f"p95 {times[int(0.95 * (len(times) - 1))]:.2f} ms, max {times[-1]:.2f} ms")


@pytestmark_browser
def test_busy_dims_the_pictures_without_removing_them(page):
    from playwright.sync_api import expect

    before = picture(page, "b")
    page.click("#busy")
    expect(page.locator("#viewer .uv")).to_have_class(re.compile(r"\bis-busy\b"), timeout=15_000)
    wait_for_opacity(page, "b", "0.55")
    assert picture(page, "b") == before and page.locator("#viewer .uv-badge").is_visible()
    page.click("#same")  # a new run clears busy; here B is A
    expect(page.locator("#viewer .uv")).to_have_class(re.compile(r"\bis-same\b"), timeout=15_000)
    expect(page.locator("#viewer .uv")).not_to_have_class(re.compile(r"\bis-busy\b"))
    wait_for_opacity(page, "b", "1")
    assert page.inner_text("#viewer .uv-curve-note") == "B is A: switch a part of B off to see it drift"
    page.evaluate("document.querySelector('#viewer').classList.add('waiting')")  # an event's js= can dim it too
    wait_for_opacity(page, "a", "0.55")


@pytestmark_browser
def test_a_click_on_the_curve_strip_moves_the_scrubber_and_a_click_on_a_sample_reports_it(page):
    from playwright.sync_api import expect

    strip = page.locator("#viewer .uv-curve")
    box = strip.bounding_box()
    strip.click(position={"x": box["width"] * 0.3, "y": box["height"] / 2})
    assert page.locator("#viewer .uv-scrubber").input_value() == "15"
    assert caption(page).startswith("step 16 of 50")
    expect(page.locator("#log textarea")).to_have_value("step 15", timeout=15_000)
    canvas = page.locator("#viewer [data-net=a] canvas")
    box = canvas.bounding_box()
    canvas.click(position={"x": box["width"] * 0.75, "y": box["height"] * 0.25})  # top right of the 2 × 2 grid
    expect(page.locator("#log textarea")).to_have_value("sample 1", timeout=15_000)


@pytestmark_browser
def test_the_canvas_shows_the_pixels_of_the_scrubbed_step_also_past_a_column_block(page, served):
    from playwright.sync_api import expect

    a, b = served[1]["run"]
    page.click("#viewer [data-kind=xt]")
    go_to(page, 7)
    assert drawn(page, "a", 57, 29 + 12, 29 + 10) == [int(grey(a.x_t[7, 3, 0, 10, 12]))] * 3  # sample 3: bottom right
    assert drawn(page, "b", 57, 12, 10) == [int(grey(b.x_t[7, 0, 0, 10, 12]))] * 3
    page.click("#long")
    expect(page.locator("#viewer .uv-scrubber")).to_have_attribute("max", "200", timeout=15_000)
    long_a = served[1]["long"][0]
    for position in (5, 130, 200):  # column blocks 0, 2 and 3
        go_to(page, position)
        assert drawn(page, "a", 28, 12, 10) == [int(grey(long_a.x_t[position, 0, 0, 10, 12]))] * 3, position
