"""Many visitors at once: concurrent gradio_client sessions against the real app, then a serial replay.

    python benchmarks/load_test.py                              # 16 sessions for 120 s, tiny random weights
    python benchmarks/load_test.py --weights weights --sessions 16 --duration 120   # the shipped models

The app runs in a subprocess on 127.0.0.1 (so its peak memory is its own, and it shares no GIL with the
clients). Each session is one `gradio_client.Client` (its own gr.State) with its own seed and ablation; it
generates, then mixes ablation changes, feature views and new generations until the time is up (scrubbing is the
page's own: it sends nothing).
Afterwards every session's requests are replayed one at a time in a fresh session on a fresh server (the first
kept the trajectories it computed, and would answer from them), and every output must be equal: images pixel
for pixel, text and plots exactly. A session that saw another's state, or a race on the
shared model, shows up as a difference. Prints requests, errors, p50/p95 latency per event (client round
trips: queueing included, which is what a visitor waits) and the server's peak RSS; exits 1 on any error or
difference. It stops by itself and takes the server down with it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

EVENTS = ("generate", "ablate", "features")
SKIP_CHOICES = (0.0, 0.5, 1.0, 1.5)
STARTUP_SECONDS = 180  # importing torch and gradio takes 5 s on an idle 2-core machine, over a minute on a busy one


@dataclass
class Request:
    event: str
    arguments: list
    fingerprint: str = ""
    seconds: float = 0.0
    error: str = ""


@dataclass
class Session:
    index: int
    seed: int
    requests: list[Request] = field(default_factory=list)


def fingerprint(outputs) -> str:
    """One hash of everything a request returned; images by their decoded pixels, not their file names."""
    from PIL import Image
    import numpy as np

    def canonical(value):
        if isinstance(value, (list, tuple)):
            return [canonical(v) for v in value]
        if isinstance(value, dict):
            return {k: canonical(v) for k, v in sorted(value.items())}
        if isinstance(value, str) and os.path.isfile(value):
            with Image.open(value) as image:
                frames = []
                for frame in range(getattr(image, "n_frames", 1)):
                    image.seek(frame)
                    pixels = np.asarray(image.convert("RGB"))
                    frames.append(f"{pixels.shape}:{hashlib.sha256(pixels.tobytes()).hexdigest()}")
            return {"pixels": frames}
        return value

    return hashlib.sha256(json.dumps(canonical(outputs), sort_keys=True, default=str).encode()).hexdigest()


class Workload:
    """What the sessions ask for: the model's own ablation sites and feature names, read from its folder."""

    def __init__(self, weights: Path, model: str, steps: int, batch: int):
        from playground import load_pipeline

        unet = load_pipeline(weights / model).unet
        self.model, self.steps, self.batch = model, steps, batch
        self.sites = list(unet.attention_sites)
        self.blocks = [name for name in unet.feature_names if name.startswith(("mid_block", "down_blocks.1", "up_blocks.0"))]

    def ablation(self, rng: random.Random) -> list:
        skips = [rng.choice(SKIP_CHOICES) for _ in range(5)]
        attention_off = rng.sample(self.sites, rng.randint(0, min(2, len(self.sites))))
        return [*skips, attention_off, rng.random() < 0.2]

    def generate(self, rng: random.Random, seed: int) -> list:
        digit = rng.choice(["every digit (0–9 cycling)", "no digit (unconditional)", str(rng.randint(0, 9))])
        sampler = rng.choice(["ddim", "dpm++", "ddpm"])
        return [self.model, "A with the ablation", digit, rng.choice([1.0, 1.5, 3.0]), seed, sampler, self.steps, self.batch,
                *self.ablation(rng)]

    def next_request(self, rng: random.Random, session: Session) -> Request:
        if not session.requests or rng.random() < 0.1:
            return Request("generate", self.generate(rng, session.seed + len(session.requests)))
        event = rng.choice(["ablate", "features", "features"])
        step = rng.randint(0, self.steps)
        if event == "ablate":
            return Request("ablate", [self.model, "A with the ablation", *self.ablation(rng), step])
        return Request("features", [step, rng.choice(self.blocks), rng.randint(0, self.batch - 1),
                                    rng.choice(["channel", "block", "global"])])


def call(client, request: Request) -> None:
    started = time.perf_counter()
    try:
        request.fingerprint = fingerprint(client.predict(*request.arguments, api_name=f"/{request.event}"))
    except Exception as error:  # a load test counts failures rather than stopping at the first
        request.error = f"{type(error).__name__}: {error}".splitlines()[0][:200]
    request.seconds = time.perf_counter() - started


def run_session(url: str, workload: Workload, session: Session, deadline: float) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    rng = random.Random(session.seed)
    while time.monotonic() < deadline:
        request = workload.next_request(rng, session)
        call(client, request)
        session.requests.append(request)


def replay(url: str, session: Session) -> list[tuple[int, str]]:
    """Requests whose serial replay, in a fresh session, does not give the same outputs: (index, event)."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    mismatches = []
    for i, original in enumerate(session.requests):
        again = Request(original.event, original.arguments)
        call(client, again)
        if again.fingerprint != original.fingerprint or again.error != original.error:
            mismatches.append((i, original.event))
    return mismatches


def memory_kib(pid: int) -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, from /proc."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, amount, _ = line.split()
                values[key.rstrip(":")] = int(amount)
    return values


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(weights: Path, port: int, sessions: int, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--weights", str(weights), "--port", str(port),
                               "--sessions", str(sessions)], env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}; see {log_path}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return server
        except OSError:
            time.sleep(0.25)
    server.terminate()
    raise RuntimeError(f"the server did not answer on {url} within {STARTUP_SECONDS} s; see {log_path}")


def serve(weights: Path, port: int, sessions: int) -> None:
    """The server side (a subprocess): the app as main() launches it, on loopback only."""
    from explainer import page
    from explainer.sessions import STATE_SESSIONS

    demo = page.build_demo(weights)
    # room for every session of the test at once: the eviction of older sessions is tested elsewhere
    page.serve(demo, queue_size=max(64, 4 * sessions), server_name="127.0.0.1", server_port=port, quiet=True,
              state_session_capacity=max(STATE_SESSIONS, 2 * sessions))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def run(weights: str = "tiny", model: str | None = None, sessions: int = 16, duration: float = 120.0,
        steps: int = 10, batch: int = 2, replay_serially: bool = True, out=sys.stdout) -> dict:
    """Run the load test and print its report; returns the figures (for the pytest that runs it short)."""
    with tempfile.TemporaryDirectory(prefix="load-test-") as scratch:
        scratch = Path(scratch)
        if weights == "tiny":
            from tiny_weights import make_tiny_weights

            weights_dir, model = make_tiny_weights(scratch / "weights"), model or "tiny"
        else:
            weights_dir, model = Path(weights).resolve(), model or "mnist"
        workload = Workload(weights_dir, model, steps, batch)
        port = free_port()
        started = time.monotonic()
        server = start_server(weights_dir, port, sessions, scratch / "server.log")
        try:
            url = f"http://127.0.0.1:{port}/"
            startup = time.monotonic() - started
            baseline = memory_kib(server.pid)["VmRSS"]
            deadline = time.monotonic() + duration
            all_sessions = [Session(i, seed=1000 * (i + 1)) for i in range(sessions)]
            threads = [threading.Thread(target=run_session, args=(url, workload, s, deadline), daemon=True) for s in all_sessions]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=duration + 300)
            memory = memory_kib(server.pid)
        finally:
            server.terminate()
            server.wait(30)
        log_tail = (scratch / "server.log").read_text(errors="replace")[-2000:]
        mismatches = {}
        if replay_serially:
            # on a fresh server: this one kept the trajectories it computed and would answer the replay from them,
            # so a run spoiled by a race would be replayed as spoiled
            replay_port = free_port()
            server = start_server(weights_dir, replay_port, sessions, scratch / "replay.log")
            try:
                mismatches = {s.index: replay(f"http://127.0.0.1:{replay_port}/", s) for s in all_sessions}
                memory = dict(memory, VmHWM=max(memory["VmHWM"], memory_kib(server.pid)["VmHWM"]))
            finally:
                server.terminate()
                server.wait(30)

    requests = [r for s in all_sessions for r in s.requests]
    errors = [r for r in requests if r.error]
    report = {
        "sessions": sessions, "duration_s": duration, "startup_s": startup, "requests": len(requests), "errors": len(errors),
        "mismatches": sum(len(m) for m in mismatches.values()), "replayed": replay_serially,
        "latency": {e: {"count": len(t), "p50": percentile(t, 0.5), "p95": percentile(t, 0.95), "max": max(t, default=float("nan"))}
                    for e in EVENTS for t in [[r.seconds for r in requests if r.event == e and not r.error]]},
        "rss_start_mib": baseline / 1024, "rss_end_mib": memory["VmRSS"] / 1024,
        "rss_peak_mib": memory["VmHWM"] / 1024,
    }
    print(f"load test: {sessions} sessions x {duration:g} s on {url} ({weights}: model {model}, {steps} steps, batch {batch}); "
          f"server up in {startup:.1f} s", file=out)
    print(f"requests: {len(requests)}, errors: {len(errors)}", file=out)
    for request in errors[:5]:
        print(f"  error in {request.event}{request.arguments}: {request.error}", file=out)
    print(f"{'event':<10}{'count':>7}{'p50 s':>9}{'p95 s':>9}{'max s':>9}", file=out)
    for event, figures in report["latency"].items():
        print(f"{event:<10}{figures['count']:>7}{figures['p50']:>9.3f}{figures['p95']:>9.3f}{figures['max']:>9.3f}", file=out)
    if replay_serially:
        print(f"serial replay: {len(requests)} requests in fresh sessions on a fresh server, {report['mismatches']} differ", file=out)
        for index, found in mismatches.items():
            if found:
                print(f"  session {index}: requests {found[:5]} differ", file=out)
    print(f"server RSS: {report['rss_start_mib']:.0f} MiB at start, {report['rss_end_mib']:.0f} MiB after the load, "
          f"peak {report['rss_peak_mib']:.0f} MiB", file=out)
    if errors or report["mismatches"]:
        print("server log (tail):\n" + log_tail, file=out)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="tiny", help="'tiny' (random tiny models, built in a temp folder) or a weights folder")
    parser.add_argument("--model", default=None, help="model to load-test (default: tiny, or mnist for a weights folder)")
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of concurrent load (the replay comes after)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--no-replay", action="store_true", help="skip the serial replay (no equality check)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the server subprocess
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(Path(args.weights), args.port, args.sessions)
    report = run(args.weights, args.model, args.sessions, args.duration, args.steps, args.batch, not args.no_replay)
    sys.exit(1 if report["errors"] or report["mismatches"] else 0)


if __name__ == "__main__":
    main()
