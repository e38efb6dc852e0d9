"""Retake the README's screenshots from a running app: `python app.py`, then `python docs/make_screenshots.py`.

Drives Debian's chromium as a visitor would (type a skip scale, move the step, press the numbers button) and
crops each picture to the part of the page the README's caption describes. The shipped weights give the same
pixels on any machine, so a retake differs from the last only where the app changed.
"""

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

DOCS = Path(__file__).resolve().parent
STEP = "number input for Step (0 = pure noise, last = finished sample)"


def skips_off(page, resolution: int) -> None:
    """Switch B's skips joining at `resolution` off and wait until the numbers say B has been rerun."""
    box = page.get_by_label(f"number input for skips joining at {resolution}×{resolution}")
    box.fill("0")
    box.press("Tab")  # the blur is the slider's release, which runs the event
    expect(page.locator("#numbers")).to_contain_text(f"skips at {resolution}×{resolution} × 0", timeout=120_000)


def move_step(page, step: int) -> None:
    box = page.get_by_label(STEP)
    box.fill(str(step))
    box.press("Tab")  # the blur is the slider's release, which runs the event
    expect(page.locator("#step-caption")).to_contain_text(f"step {step + 1} of", timeout=30_000)


def settle(page) -> None:
    """Scroll the whole page through the viewport (the feature maps load lazily), then wait for the pictures."""
    height = page.evaluate("document.body.scrollHeight")
    for y in range(0, height, 500):
        page.evaluate(f"window.scrollTo(0, {y})")
        page.wait_for_timeout(150)
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_function("Array.from(document.images).every(image => image.complete)")  # Gradio's event stream never idles
    page.wait_for_timeout(1000)


def top_of(page, selector: str) -> float:
    return page.locator(selector).first.bounding_box()["y"] + page.evaluate("window.scrollY")


def shoot(page, name: str, top: float, bottom: float) -> None:
    width = page.viewport_size["width"]
    page.screenshot(path=DOCS / name, full_page=True, clip={"x": 0, "y": top, "width": width, "height": bottom - top})
    print(f"{name}: {width}×{int(bottom - top)}")


def open_page(browser, url: str, width: int):
    page = browser.new_page(viewport={"width": width, "height": 1000})
    page.goto(url)
    expect(page.locator("#step-caption")).to_contain_text("finished sample", timeout=120_000)
    return page


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])

        # the controls and the reverse process mid-way, B's 28×28 skips off (it diverges)
        page = open_page(browser, args.url, 1050)
        skips_off(page, 28)
        move_step(page, 36)
        settle(page)
        shoot(page, "screenshot-controls.png", 0, top_of(page, "#img-AminusB-x0") + 40)
        page.close()

        # the finished sample with B's 14×14 skips off: what A and B draw from the same noise
        page = open_page(browser, args.url, 1400)
        skips_off(page, 14)
        settle(page)
        shoot(page, "screenshot-explore.png", 0, top_of(page, "#img-AminusB-x0") + 40)

        # the same run at step 38: the bottleneck's maps, the numbers, ε-error and spectra
        page.set_viewport_size({"width": 1050, "height": 1000})
        move_step(page, 37)
        page.locator("#numbers-button").click()
        expect(page.locator("#spectrum-plot img")).to_be_visible(timeout=120_000)
        settle(page)
        feature_heading = page.get_by_role("heading", name="Feature maps")
        top = feature_heading.bounding_box()["y"] + page.evaluate("window.scrollY") - 10
        bottom = top_of(page, "#spectrum-plot") + page.locator("#spectrum-plot").bounding_box()["height"] + 10
        shoot(page, "screenshot-features-numbers.png", top, bottom)
        browser.close()


if __name__ == "__main__":
    main()
