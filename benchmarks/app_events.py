"""App events through the real server: cold start, generate A+B, scrub, feature view, ablation change.

    python benchmarks/app_events.py [--repeats 5]

Starts `python app.py` on the shipped weights (a fresh process, so cold start counts imports and model
loading), drives it with gradio_client and prints the median wall time of each event as the client sees
it (server work + one loopback round trip), beside the targets of the performance issue.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"generate A+B (batch 1, 50 DDIM steps)": 1.5, "scrub": 0.05, "feature view": 0.15, "ablation change (rerun B)": 1.0}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(fn, repeats):
    values = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        values.append(time.perf_counter() - start)
    return statistics.median(values)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    from gradio_client import Client

    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False")
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except Exception:
                if server.poll() is not None:
                    raise SystemExit("app.py exited during start-up")
                time.sleep(0.1)
        cold_start = time.perf_counter() - started
        client = Client(url, verbose=False)
        generate = lambda i: client.predict("mnist", "A with the ablation", "7", 1.5, i, "ddim", 50, 1,  # noqa: E731
                                            1, 1, 1, 1, 1, [], False, api_name="/generate")
        results = {"generate A+B (batch 1, 50 DDIM steps)": timed(generate, args.repeats)}
        results["scrub"] = timed(lambda i: client.predict(i * 7 % 50, api_name="/scrub"), args.repeats * 4)
        results["feature view"] = timed(lambda i: client.predict(i * 7 % 50, "mid_block.attentions.0", 0, "block",
                                                                 api_name="/features"), args.repeats * 2)
        results["ablation change (rerun B)"] = timed(lambda i: client.predict(
            "mnist", "A with the ablation", [0, 0.5][i % 2], 1, 1, 1, 1, [], False, 25, api_name="/ablate"), args.repeats)
    finally:
        server.terminate()
        server.wait(10)
    print(f"cold start to first served page: {cold_start:.2f} s (target 10 s)")
    print("| event | median seconds (client round trip) | target | within |")
    print("|---|---|---|---|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.3f} | {TARGETS[name]} | {'yes' if seconds <= TARGETS[name] else 'no'} |")


if __name__ == "__main__":
    main()
