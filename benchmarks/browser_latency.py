"""What a visitor waits for: a slider or switch moved in Chromium until the changed picture has loaded.

    python benchmarks/browser_latency.py [--repeats 12]

The app is built and served in this process on the shipped weights and driven by Debian's chromium through
Playwright (requirements-dev.txt; never `playwright install`). After one Generate (50 steps, batch 1) it
measures, per event, the browser's time from the input to the new picture being loaded, and the server-side time
of the same event (Gradio's queue timer, as `app_events.py` reads it). The ratio is what the browser adds: the
event's round trip through Gradio's queue and the fetching of every picture the event returns.
- scrub: the step slider moved one step with the keyboard (9 pictures);
- feature view: a block picked in the architecture strip (6 feature pictures);
- ablation change: the 28×28 skip scale typed in, 0.05, 0.1, 0.15, ... (B reruns; 9 pictures, numbers, plot; a
  value seen before would be answered from the trajectories the server keeps);
- switch after a pause: an attention site switched, one more each time, once the server is idle (it computed the
  runs one switch away meanwhile, as it does while a visitor looks at the pictures).
Before those, once each: a page opened until its own run (its defaults, batch 4) has loaded, from the address typed,
for the server's first visitor, right after it started (the server guesses that run from its start), and for the
next (kept); then Generate with a new seed, picked once the server is idle (it guessed that run meanwhile), and
with another new seed clicked at once (computed).
Chromium runs on the same cores as the server here, unlike a visitor's browser: the server-side figures come out
higher than app_events.py's, most for the network events.
"""

import argparse
import inspect
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app_events import free_port  # noqa: E402  (this folder is on sys.path when the script runs)

# Resolves with the ms from now until the picture in #id has a new src and has loaded (-1 after 30 s).
# setTimeout, not requestAnimationFrame: a headless page gets no animation frames.
PICTURE_CHANGED = """([id, before]) => new Promise(resolve => {
  const started = performance.now();
  const poll = () => {
    const img = document.querySelector('#' + id + ' img');
    if (img && img.getAttribute('src') !== before && img.complete) resolve(performance.now() - started);
    else if (performance.now() - started > 30000) resolve(-1);
    else setTimeout(poll, 2);
  };
  poll();
})"""

# Resolves with the ms since the page's navigation began until the picture in #id has loaded (-1 after 120 s).
PICTURE_SHOWN = """id => new Promise(resolve => {
  const poll = () => {
    const img = document.querySelector('#' + id + ' img');
    if (img && img.getAttribute('src') && img.complete) resolve(performance.now());
    else if (performance.now() > 120000) resolve(-1);
    else setTimeout(poll, 2);
  };
  poll();
})"""


class HandlerClock:
    """Gradio's running total of processing time over every event whose function is `handler` (as the app wraps it)."""

    def __init__(self, demo, handler):
        def unwrapped(fn):
            inner = inspect.unwrap(fn)
            return getattr(inner, "func", inner)  # the app binds the registry with functools.partial

        self.totals = demo._queue.process_time_per_fn  # private, but it is the server's own measurement
        self.fns = [fn for fn in demo.fns.values() if unwrapped(fn.fn) is handler]
        if not self.fns:
            raise SystemExit(f"no event of the app runs {handler.__name__}")

    def read(self):
        records = [self.totals[fn] for fn in self.fns if fn in self.totals]
        return sum(r.count for r in records), sum(r.process_time for r in records)


def what_the_page_shows(page, clock, count_before, picture, before_src):
    """Which side a picture that never changed stopped at: the server never booked the event (the page did not send
    it, or it is still queued or running), or it answered and the picture kept its address or failed to load."""
    import tempfile

    images = page.locator(f"#{picture} img")
    after_src = images.first.get_attribute("src") if images.count() else None
    toasts = page.locator(".toast-body").all_inner_texts()
    screenshot = Path(tempfile.mkdtemp(prefix="browser-latency-")) / "page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    return (f"the server booked {clock.read()[0] - count_before} such event(s) meanwhile; the picture's address "
            f"{'is unchanged' if after_src == before_src else 'changed'} ({after_src!r}); toasts: {toasts or 'none'}; "
            f"the page: {screenshot}")


def timed_input(page, clock, picture, act, event):
    """Run `act` (one input of `event`) and return (browser ms until `picture` changed, server ms of the event it started)."""
    images = page.locator(f"#{picture} img")
    before_src = images.first.get_attribute("src") if images.count() else None  # no picture before the first Generate
    count, before = clock.read()
    page.evaluate("args => { window.pictureChanged = (" + PICTURE_CHANGED + ")(args); }", [picture, before_src])
    act()
    browser_ms = page.evaluate("window.pictureChanged")
    if browser_ms < 0:
        raise SystemExit(f"{event}: #{picture} did not change within 30 s; {what_the_page_shows(page, clock, count, picture, before_src)}")
    return browser_ms, booked_ms(clock, count, before, event)


def booked_ms(clock, count, before, event):
    """The server-side ms of the one event `clock` booked after reading (count, before)."""
    deadline = time.monotonic() + 30
    while clock.read()[0] == count:  # the queue books the time just after sending the result
        if time.monotonic() > deadline:
            raise SystemExit(f"{event}: the server booked no time for the event")
        time.sleep(0.001)
    return (clock.read()[1] - before) * 1e3


def page_opened(browser, url, clock, event):
    """Open the app in a new page and return (it, browser ms from navigation until its run's picture loaded, server ms)."""
    count, before = clock.read()
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(url, wait_until="domcontentloaded")
    browser_ms = page.evaluate(PICTURE_SHOWN, "img-A-x0")
    if browser_ms < 0:
        raise SystemExit(f"{event}: the page showed no run within 120 s; {what_the_page_shows(page, clock, count, 'img-A-x0', None)}")
    return page, (browser_ms, booked_ms(clock, count, before, event))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=12)
    args = p.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")

    from explainer import features
    from explainer import page
    from explainer import pictures
    from explainer import runs
    from playground import serving
    from playwright.sync_api import expect, sync_playwright

    demo = page.build_demo(ROOT / "weights")
    _, url, _ = page.serve(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    results = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-background-networking"])
            generate_clock = HandlerClock(demo, runs.generate)
            event = "a page opened, until its run has loaded: the first visitor, as the server starts"
            first_page, results[event] = page_opened(browser, url, generate_clock, event)
            first_page.close()

            def pause():
                if not serving.NETWORK_THREAD.wait_until_idle(timeout=300):
                    raise SystemExit("the server's prefetching did not finish within 300 s")

            pause()
            event = "a page opened, until its run has loaded: the next visitor (kept)"
            page, results[event] = page_opened(browser, url, generate_clock, event)
            expect(page.locator("#feature-caption")).to_contain_text("mid_block", timeout=60_000)
            generate_button, seed = page.get_by_role("button", name="Generate"), page.locator("#seed input")
            seed.fill("1")
            seed.press("Tab")
            pause()
            event = "Generate, a new seed picked, after a pause (guessed)"
            results[event] = timed_input(page, generate_clock, "img-A-x0", generate_button.click, event)
            expect(page.locator("#feature-caption")).to_contain_text("mid_block", timeout=60_000)
            seed.fill("2")
            seed.press("Tab")
            event = "Generate, a new seed, clicked at once (computed)"
            results[event] = timed_input(page, generate_clock, "img-A-x0", generate_button.click, event)
            expect(page.locator("#feature-caption")).to_contain_text("mid_block", timeout=60_000)
            pause()
            batch = page.get_by_label("number input for Batch")
            batch.fill("1")  # as the performance targets and app_events.py have it (the page's default is 4)
            batch.press("Tab")
            page.get_by_role("button", name="Generate").click()
            # this run's own caption: the page said "finished sample" already, for the batch of 4 before it, and a
            # scrub sent before this run ends would be undone by it (the run puts the slider back on its last step)
            expect(page.locator("#step-caption")).to_contain_text("finished sample. Each grid holds the one sample", timeout=120_000)
            expect(page.locator("#feature-caption")).to_contain_text("mid_block", timeout=60_000)
            # from the middle of the run: the last steps' x̂0 are the finished sample, and an identical picture
            # keeps its address (Gradio names cached pictures by their content), so nothing would change
            middle = page.get_by_label("number input for Step (0 = pure noise, last = finished sample)")
            middle.fill("30")
            middle.press("Tab")
            expect(page.locator("#step-caption")).to_contain_text("step 31 of", timeout=60_000)
            page.wait_for_timeout(1000)  # the follow-ups (the maps at that step) are over

            step = page.locator("#step input[type=range]")
            strip = page.locator("#arch-strip label")
            skip = page.locator("#skip-0 input[type=number]")

            def scrub():
                step.focus()
                page.keyboard.press("ArrowLeft")

            def open_block(i):
                return lambda: strip.nth(i % 2 * (strip.count() - 1)).click()  # the first and the last block, in turn

            def ablate(i):
                def act():
                    skip.fill(f"{0.05 * (i + 1):.2f}")
                    skip.press("Tab")  # blur: the slider's release
                return act

            sites = page.locator("#attention-off input[type=checkbox]")

            def switch_site(i):
                return lambda: sites.nth(i % sites.count()).click()  # off one by one, then on again: every state new

            events = {  # name: (handler, picture, input i, what comes before each input)
                "scrub": (pictures.scrub, "img-A-x0", lambda i: scrub, None),
                "feature view": (features.view_features, "feat-A-channels", open_block, None),
                "ablation change": (runs.rerun_b, "img-B-x0", ablate, None),
                "switch after a pause": (runs.rerun_b, "img-B-x0", switch_site, pause),
            }
            for name, (handler, picture, action, before) in events.items():
                clock = HandlerClock(demo, handler)
                pairs = []
                for i in range(args.repeats):
                    if before is not None:
                        before()
                    pairs.append(timed_input(page, clock, picture, action(i), f"{name}, input {i + 1}"))
                    page.wait_for_timeout(300)  # the event's follow-ups (the maps after a rerun) are over
                results[name] = [statistics.median(values) for values in zip(*pairs)]
            browser.close()
    finally:
        demo.close()

    print("| event | browser: input to new picture loaded, median (ms) | server-side median (ms) | browser / server |")
    print("|---|---|---|---|")
    for name, (browser_ms, server_ms) in results.items():
        print(f"| {name} | {browser_ms:.0f} | {server_ms:.0f} | {browser_ms / server_ms:.2f} |")


if __name__ == "__main__":
    main()
