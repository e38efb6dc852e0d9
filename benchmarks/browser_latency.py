"""What a visitor waits for, measured in Chromium: from an input to the changed picture on screen.

    python benchmarks/browser_latency.py [--repeats 12]

The app is built and served in this process on the shipped weights and driven by Debian's chromium through
Playwright (requirements-dev.txt; never `playwright install`). Per event, the browser's time from the input to the
new picture, and the server-side time of the same event (Gradio's queue timer, as `app_events.py` reads it):
- scrub: ArrowLeft on the step scrubber, from the key event to the redrawn caption (the pictures are drawn in the
  same handler, from the run's frames already in the page: no server event, so no server column). Target: p95 ≤ 50 ms;
- feature view: a block clicked on the diagram, until its channel grid for A has loaded. Target: ≤ 200 ms;
- ablation change: the 28×28 skip typed in, 0.05, 0.1, ... and Enter (B reruns; a value seen before would be answered
  from the kept trajectories), until the viewer has drawn B's new frames;
- Generate: the page's default run (batch 4, 50 steps) with a new seed, clicked at once (computed), until the
  viewer has drawn it. Target: ≤ 2 s on a quick host; its two networks bound it (see app_events.py).
Chromium runs on the same cores as the server here, unlike a visitor's browser: the network events come out slower
than app_events.py's.
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

# Resolves with the ms from the next keydown on the scrubber until the viewer's caption changed: the redraw of the
# three pictures happens in the input handler, before the caption is set.
SCRUB_TIMED = """() => new Promise(resolve => {
  const scrubber = document.querySelector('#viewer .uv-scrubber'), caption = document.querySelector('#viewer .uv-caption');
  let pressed = null;
  scrubber.addEventListener('keydown', event => { pressed = performance.now(); }, {once: true, capture: true});
  new MutationObserver((_, observer) => { if (pressed !== null) { observer.disconnect(); resolve(performance.now() - pressed); } })
    .observe(caption, {childList: true, characterData: true, subtree: true});
})"""

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

# Resolves with the ms from now until the viewer has drawn a run other than the one it shows (-1 after 60 s).
FRAMES_CHANGED = """() => new Promise(resolve => {
  const started = performance.now(), canvas = n => document.querySelector(`#viewer figure[data-net=${n}] canvas`);
  const before = canvas('a').toDataURL() + canvas('b').toDataURL();
  const poll = () => {
    const viewer = document.querySelector('#viewer');
    if (!viewer.classList.contains('waiting') && canvas('a').toDataURL() + canvas('b').toDataURL() !== before)
      resolve(performance.now() - started);
    else if (performance.now() - started > 60000) resolve(-1);
    else setTimeout(poll, 5);
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

    def booked_ms(self, count, before, event):
        """The server-side ms of the one event booked after reading (count, before)."""
        deadline = time.monotonic() + 30
        while self.read()[0] == count:  # the queue books the time just after sending the result
            if time.monotonic() > deadline:
                raise SystemExit(f"{event}: the server booked no time for the event")
            time.sleep(0.001)
        return (self.read()[1] - before) * 1e3


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=12)
    args = p.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")

    from explainer import features, page, runs
    from playground import serving
    from playwright.sync_api import expect, sync_playwright

    demo = page.build_demo(ROOT / "weights")
    _, url, _ = page.serve(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    rows = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-background-networking"])
            tab = browser.new_page(viewport={"width": 1440, "height": 900})
            tab.goto(url, wait_until="domcontentloaded")
            expect(tab.locator("#verdicts")).to_contain_text("intact", timeout=180_000)
            expect(tab.locator("#feature-caption")).to_contain_text("mid_block", timeout=60_000)
            serving.NETWORK_THREAD.wait_until_idle(timeout=300)

            scrubber = tab.locator("#viewer .uv-scrubber")
            scrubber.focus()
            scrub_ms = []
            for _ in range(max(args.repeats, 40)):  # a percentile wants more than a dozen
                timed = tab.evaluate_handle(SCRUB_TIMED)
                scrubber.press("ArrowLeft")
                scrub_ms.append(tab.evaluate("promise => promise", timed))
            print("scrub measured", file=sys.stderr, flush=True)
            rows.append(("scrub (p95; median)", f"{percentile(scrub_ms, 0.95):.1f}; {statistics.median(scrub_ms):.1f}", "no event"))

            views, clock = [], HandlerClock(demo, features.view_features)
            blocks = ["mid_block.resnets.1", "down_blocks.1.attentions.0"]
            for i in range(args.repeats):
                picture = tab.locator("#feat-A-channels img")
                before = picture.first.get_attribute("src") if picture.count() else None
                count, booked = clock.read()
                tab.evaluate("args => { window.changed = (" + PICTURE_CHANGED + ")(args); }", ["feat-A-channels", before])
                tab.locator(f'#diagram [data-kind="block"][data-name="{blocks[i % 2]}"]').first.click()
                browser_ms = tab.evaluate("window.changed")
                if browser_ms < 0:
                    raise SystemExit("feature view: the channel grid never changed")
                views.append((browser_ms, clock.booked_ms(count, booked, "feature view")))
                tab.wait_for_timeout(200)
            print("feature views measured", file=sys.stderr, flush=True)
            rows.append(("feature view (a block clicked on the diagram)", *(f"{statistics.median(v):.0f}" for v in zip(*views))))

            for name, handler, act in (
                ("ablation change (a skip scale typed, Enter)", runs.rerun_b,
                 lambda i: (tab.get_by_label("number input for skips joining at 28×28").fill(f"{0.05 * (i + 1):.2f}"),
                            tab.get_by_label("number input for skips joining at 28×28").press("Enter"))),
                ("Generate, batch 4 × 50 steps, a new seed clicked at once (computed)", runs.generate,
                 lambda i: (tab.locator("#seed input").fill(str(100 + i)), tab.locator("#seed input").press("Tab"),
                            tab.get_by_role("button", name="Generate").click())),
            ):
                timings, clock = [], HandlerClock(demo, handler)
                for i in range(args.repeats):
                    serving.NETWORK_THREAD.wait_until_idle(timeout=300)  # measured alone, not beside a guess
                    count, booked = clock.read()
                    tab.evaluate("() => { window.changed = (" + FRAMES_CHANGED + ")(); }")
                    act(i)
                    browser_ms = tab.evaluate("window.changed")
                    if browser_ms < 0:
                        raise SystemExit(f"{name}: the viewer never drew a new run")
                    timings.append((browser_ms, clock.booked_ms(count, booked, name)))
                    print(name, i, timings[-1], file=sys.stderr, flush=True)
                rows.append((name, *(f"{statistics.median(v):.0f}" for v in zip(*timings))))
            browser.close()
    finally:
        demo.close()

    print("| event | browser: input to new picture (ms) | server side, median (ms) |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
