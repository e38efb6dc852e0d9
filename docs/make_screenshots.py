"""Retake the README's screenshots from a running app: `python app.py`, then `python docs/make_screenshots.py`.

Drives Debian's chromium as a visitor would (click the diagram, scrub, open a tab) at a desktop's size and a phone's.
The shipped weights give the same pixels on any machine, so a retake differs from the last only where the app changed.
"""

import argparse
import re
import shutil
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

DOCS = Path(__file__).resolve().parent


def wait_for_run(page, says: str = "intact") -> None:
    """The run is in: the verdicts say `says` and the pictures are no longer waiting for a newer one."""
    expect(page.locator("#verdicts")).to_contain_text(says, timeout=180_000)
    expect(page.locator("#viewer")).not_to_have_class(re.compile("waiting"), timeout=180_000)
    page.wait_for_timeout(800)  # the feature maps follow the run


def cut_skip(page, resolution: int) -> None:
    page.locator(f'#diagram [data-kind="skip"][data-resolution="{resolution}"]').first.click()
    wait_for_run(page, f"skips at {resolution}×{resolution} × 0")


def open_page(browser, url: str, width: int, height: int):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url, wait_until="domcontentloaded")
    wait_for_run(page)
    return page


def on_page(page, selector: str) -> dict:
    """The element's box in page coordinates (a full-page screenshot's), not the viewport's."""
    box = page.locator(selector).first.bounding_box()
    return dict(box, y=box["y"] + page.evaluate("window.scrollY"))


def shoot(page, name: str, **clip) -> None:
    page.screenshot(path=DOCS / name, full_page=bool(clip), **({"clip": clip} if clip else {}))
    size = page.viewport_size if not clip else clip
    print(f"{name}: {size['width']}×{size['height']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])

        # the first screen, B's 14×14 skip cut on the diagram, mid-way through the run
        page = open_page(browser, args.url, 1440, 900)
        cut_skip(page, 14)
        scrubber = page.locator("#viewer .uv-scrubber")
        scrubber.focus()
        for _ in range(12):
            scrubber.press("ArrowLeft")
        expect(page.locator("#feature-caption")).to_contain_text("t = 220 ·", timeout=60_000)
        page.wait_for_timeout(500)
        shoot(page, "screenshot-controls.png")

        # the same on a phone: A and B side by side, the scrubber under them
        phone = open_page(browser, args.url, 390, 844)
        shoot(phone, "screenshot-phone.png")
        phone.close()

        # the numbers at that step: ε-error per timestep and the skip vs backbone spectra
        page.get_by_role("tab", name="Numbers").click()
        page.get_by_role("button", name=re.compile("Compute ε-error")).click()
        expect(page.locator("#spectrum-plot img")).to_be_visible(timeout=120_000)
        numbers = on_page(page, "#tab-numbers")
        shoot(page, "screenshot-features-numbers.png", x=0, y=numbers["y"] - 50, width=1440, height=numbers["height"] + 60)

        # when does it matter: the sweep of B's ablation over windows of t
        page.get_by_role("tab", name="When does it matter?").click()
        page.get_by_role("button", name=re.compile("sweep the window")).click()
        expect(page.locator("#sweep-table")).to_contain_text("B's ablation:", timeout=300_000)
        sweep = on_page(page, "#tab-sweep")
        shoot(page, "screenshot-explore.png", x=0, y=sweep["y"] - 50, width=1440, height=sweep["height"] + 60)
        browser.close()


if __name__ == "__main__":
    main()
