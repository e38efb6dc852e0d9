"""App events through the real server: cold start, generate A+B, feature view, ablation change, memory.

(Scrubbing sends no event: the page draws every step from the run's frames; browser_latency.py times it.)

    python benchmarks/app_events.py [--repeats 5] [--sessions 6]

1. Cold start: `python app.py` in a fresh process (imports, model loading) until the first page is served.
2. Events: the app is built and launched in this process on loopback and driven with gradio_client. Every
   request's settings are new to the server (it keeps the trajectories it computed and answers a repeated
   request from them, and computes the runs one switch away in its idle time), except in the last three events:
   one repeats the ablation changes, one sends each change, one switch from the last, only once the server is
   idle again (a visitor who looks before switching), and one sends the switch the server guesses first half a
   second after the change before it (a visitor who switches while the guess is part-way; those changes before
   it are counted with the computed ones). The other events come one right after another, so prefetching
   only ever gives way to them (one step of a run on one core). For each
   event it prints the median **server-side** time — Gradio's own queue timer around preprocessing, the
   handler and postprocessing (image encoding), which is what the performance targets mean — beside the
   client's round trip (that adds the event stream, polling and file download of a loopback client).
3. Memory: the bytes each session keeps in its gr.State (trajectories of A and B at the largest batch),
   and the server's resident memory as sessions come and go.
It also prints the host's speed (one guided step of the flagship on one and two threads): the targets are
seconds, and these hosts drift by 2x within minutes, so a run's seconds mean little alone. Hence the peer:
after every generate and ablation change, with the server idle, the same networks run bare on the same
threads (a plain guided DDIM loop that keeps nothing: no trajectory, pictures, plot or server), and each
event prints its ratio to that. The ratio is what the app adds to its networks; the host cancels out.
"""

import argparse
import gc
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explainer import checks, page  # noqa: E402
from playground import registry, serving  # noqa: E402

PREFETCHED = "ablation change, one switch away after a pause"
MID_GUESS = "ablation change, one switch away mid-guess"
TARGETS = {"generate A+B": 1.5, "feature view": 0.15, "ablation change": 1.0, "ablation change, seen before": 1.0,
           PREFETCHED: 1.0, MID_GUESS: 1.0}
NO_SKIP_AT_FIRST = (0, 1, 1, 1, 1)  # B really differs from A, so generate runs both networks
EVENT_DIGIT, EVENT_GUIDANCE = 7, 1.5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_page(url, server=None):
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            if server is not None and server.poll() is not None:
                raise SystemExit("app.py exited during start-up")
            time.sleep(0.05)


def cold_start_seconds():
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1")
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_page(f"http://127.0.0.1:{port}/", server)
        return time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(10)


class ServerClock:
    """Per-call server time of one event, read from the queue's running total for that event's function.

    Gradio keeps `process_time_per_fn` (seconds summed over calls, preprocessing to postprocessing) for its
    ETA estimates; calls here are sequential, so the change in the total is exactly one call's time.
    """

    def __init__(self, demo, api_name):
        self.totals = demo._queue.process_time_per_fn  # private, but it is the server's own measurement
        self.fn = next(fn for fn in demo.fns.values() if fn.api_name == api_name.lstrip("/"))

    def read(self):
        record = self.totals.get(self.fn)
        return (record.count, record.process_time) if record is not None else (0, 0.0)


# The clients run in a child process: in this one they would compete with the server for the GIL.
CLIENT = """
import json, sys, time
from gradio_client import Client
url, plan = sys.argv[1], json.loads(sys.argv[2])
sessions = {}
for session, api_name, args, delay in plan:
    client = sessions.get(session) or sessions.setdefault(session, Client(url, verbose=False))
    time.sleep(delay)  # a visitor who looks that long before the next input
    started = time.perf_counter()
    client.predict(*args, api_name=api_name)
    print(time.perf_counter() - started, flush=True)
    sys.stdin.readline()  # the server's clock is read between requests
"""


def run_plan(demo, url, plan, peers=None, pause_before=()):
    """[(session, api_name, args, delay)] sent one at a time, each `delay` seconds after the one before was answered
    (and its peer run); returns [(server seconds, client seconds, peer seconds, pause
    seconds)] per request. peers: api_name -> peer(the request's arguments) -> seconds, run after that request (else
    None). pause_before: indices of requests sent only once the server is idle (its prefetching done); the pause is
    how long that took (else None)."""

    peers = peers or {}
    child = subprocess.Popen([sys.executable, "-c", CLIENT, url, json.dumps(plan)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    clocks, results = {}, []
    try:
        pause = None
        for index, (_, api_name, arguments, _) in enumerate(plan):
            clock = clocks.get(api_name) or clocks.setdefault(api_name, ServerClock(demo, api_name))
            count, before = clock.read()
            line = child.stdout.readline()
            if not line:
                raise SystemExit(f"the client process failed during {api_name}")
            while clock.read()[0] == count:  # the queue books the time just after sending the result
                time.sleep(0.001)
            peer = peers.get(api_name)
            results.append((clock.read()[1] - before, float(line), None if peer is None else peer(arguments), pause))
            pause = None
            if index + 1 in pause_before:
                started = time.perf_counter()
                if not serving.NETWORK_THREAD.wait_until_idle(timeout=300):
                    raise SystemExit("the server's prefetching did not finish within 300 s")
                pause = time.perf_counter() - started
            child.stdin.write("\n")
            child.stdin.flush()
    finally:
        child.stdin.close()
        child.wait(60)
    return results


def rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def session_bytes(batch):
    """Bytes of the trajectories one session keeps in its gr.State after a Generate with B ablated."""
    from dataclasses import replace

    from playground import Ablation, SampleSettings
    from playground.sampling import digits_cycle, sample

    model = registry.ModelRegistry(ROOT / "weights").get("mnist")
    settings = SampleSettings(steps=50, batch=batch, label=digits_cycle(batch), guidance=EVENT_GUIDANCE)
    a = sample(model, settings)
    b = sample(model, replace(settings, ablation=Ablation(skip_scale={28: 0.0})))
    return a.nbytes() + b.nbytes()


def guided_step_ms(threads, repeats=30):
    """Median ms of one guided step of the flagship (a batch-2 forward), on the app's network thread.

    The targets are absolute seconds, and hosts differ (and drift) by 1.5-2x: this says which host a run had."""
    import torch

    def measure():
        unet = registry.ModelRegistry(ROOT / "weights").get("mnist").unet
        x, t, labels = torch.randn(2, 1, 28, 28), torch.tensor(500), torch.tensor([7, 10])
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                for _ in range(3):
                    unet(x, t, labels)
                times = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    unet(x, t, labels)
                    times.append(time.perf_counter() - started)
        finally:
            torch.set_num_threads(before)
        return statistics.median(times) * 1e3

    return serving.on_network_thread(measure)()


def bare_networks(model, seed, ablation):
    """The networks of one guided 50-step DDIM run at batch 1 and nothing else: the network events' peer."""
    import torch
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.scheduler_config)
    scheduler.set_timesteps(50)
    x = torch.randn((1, *model.image_shape), generator=torch.Generator().manual_seed(seed))
    labels = torch.tensor([EVENT_DIGIT, model.null_label])
    with torch.inference_mode():
        for t in scheduler.timesteps:
            eps_cond, eps_uncond = model.unet(torch.cat([x, x]), t, labels, ablation=ablation).sample.chunk(2)
            x = scheduler.step(eps_uncond + EVENT_GUIDANCE * (eps_cond - eps_uncond), t, x).prev_sample
    return x


def bare_peers(model, ablation_seed):
    """{api_name: peer(the request's arguments) -> seconds}: the networks of each network event alone, on the
    threads the app gives them (generate: A intact and B side by side, a core each; an ablation change: B alone
    on the network thread, two cores). ablation_seed: the seed of the generate whose B the ablations rerun."""
    import torch

    from playground import Ablation, SampleSettings
    from playground.sampling import sample

    settings = SampleSettings(sampler="ddim", steps=50, seed=0, batch=1, label=EVENT_DIGIT, guidance=EVENT_GUIDANCE)
    same = serving.on_network_thread(lambda: torch.allclose(sample(model, settings).final, bare_networks(model, 0, Ablation()), atol=1e-4))
    assert same(), "the peer must compute what the app's sampler computes"

    def b_ablation(controls):  # the skip sliders (28, 14, 7 and two hidden), the attention sites off, time off
        return Ablation(skip_scale=dict(zip(model.unet.skip_resolutions, controls[:3])), attention_off=controls[5],
                        time_embedding_off=controls[6])

    @serving.on_network_thread
    def generate(args):
        seed = args[4]
        started = time.perf_counter()
        serving.side_by_side(lambda: bare_networks(model, seed, Ablation()), lambda: bare_networks(model, seed, b_ablation(args[8:15])))
        return time.perf_counter() - started

    @serving.on_network_thread
    def ablate(args):
        started = time.perf_counter()
        bare_networks(model, ablation_seed, b_ablation(args[2:9]))
        return time.perf_counter() - started

    return {"/generate": generate, "/ablate": ablate}


def ablate_args(i):
    """The i-th ablation change: a 28x28 skip scale no earlier request used (kept trajectories would answer it)."""
    return ["mnist", "A with the ablation", round(0.05 * (i + 1), 2), 1, 1, 1, 1, [], False, 25]


ONE_SWITCH_MOVES = ("skip 14", "skip 7", "mid_block.attentions.0", "time", "up_blocks.0.attentions.0")


def one_switch_chain(scale_28, count):
    """`count` ablation changes from the 28x28 skip at scale_28, each one control away from the one before (the
    runs the server computes in its idle time): the 14x14 skips off, then the 7x7 ones, an attention site, time..."""
    skips, sites, time_off, chain = [scale_28, 1, 1, 1, 1], [], False, []
    for i in range(count):
        move = ONE_SWITCH_MOVES[i % len(ONE_SWITCH_MOVES)]
        if move.startswith("skip"):
            slider = {"skip 14": 1, "skip 7": 2}[move]
            skips[slider] = 1 - skips[slider]
        elif move == "time":
            time_off = not time_off
        else:
            sites = sorted(set(sites) ^ {move})
        chain.append(["mnist", "A with the ablation", *skips, list(sites), time_off, 25])
    return chain


def mid_guess_pairs(count):
    """`count` pairs: an ablation change no earlier request used (the 7x7 skips at a new scale), then the switch
    the server guesses first from there (the 28x28 skips off; Ablation.one_switch_away's order)."""
    pairs = []
    for i in range(count):
        scale_7 = round(0.55 + 0.05 * i, 2)
        pairs.append((["mnist", "A with the ablation", 1, 1, scale_7, 1, 1, [], False, 25],
                      ["mnist", "A with the ablation", 0, 1, scale_7, 1, 1, [], False, 25]))
    return pairs


def generate_args(seed, batch, skips):
    return ("mnist", "A with the ablation", str(EVENT_DIGIT), EVENT_GUIDANCE, seed, "ddim", 50, batch, *skips, [], False)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5, help="requests of each network event (4x and 2x for the views)")
    p.add_argument("--sessions", type=int, default=6, help="sessions per round of the memory check")
    p.add_argument("--mid-guess-delay", type=float, default=0.5,
                   help="seconds between an ablation change and the switch sent while the server is guessing it")
    args = p.parse_args()

    cold = cold_start_seconds()


    # no torch call on this thread (not even set_num_threads): the app keeps every network on its own thread
    demo = page.build_demo(ROOT / "weights")
    # the memory rounds show the bound: with room for `sessions` states, each new round evicts the last one's
    _, url, _ = page.serve(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                          state_session_capacity=args.sessions)
    try:
        if not serving.NETWORK_THREAD.wait_until_idle(timeout=300):  # the run a page opens on is guessed as the server starts
            raise SystemExit("the server's prefetching did not finish within 300 s")
        host = {threads: guided_step_ms(threads) for threads in (1, 2)}
        events = {  # name -> [(api_name, arguments, seconds to wait before sending)]
            "generate A+B": [("/generate", generate_args(i, 1, NO_SKIP_AT_FIRST), 0) for i in range(args.repeats)],
            "feature view": [("/features", [i * 7 % 50, "mid_block.attentions.0", 0, "block"], 0) for i in range(args.repeats * 2)],
            "ablation change": [("/ablate", ablate_args(i), 0) for i in range(args.repeats)],
            # the same changes again: the server kept those B trajectories (playground.TrajectoryCache)
            "ablation change, seen before": [("/ablate", ablate_args(i), 0) for i in range(args.repeats)],
            # a visitor who looks before switching: the server computed the runs one switch away meanwhile
            PREFETCHED: [("/ablate", a, 0) for a in one_switch_chain(ablate_args(args.repeats - 1)[2], args.repeats)],
        }
        plan = [(name, api_name, arguments, delay) for name, requests in events.items() for api_name, arguments, delay in requests]
        pause_before = {index for index, (name, *_) in enumerate(plan) if name == PREFETCHED}
        # a visitor who switches while the server is part-way through guessing that switch: its request goes on from
        # the guess's steps
        for change, switch in mid_guess_pairs(args.repeats):
            plan += [("ablation change", "/ablate", change, 0), (MID_GUESS, "/ablate", switch, args.mid_guess_delay)]
        # loaded on the network thread: loading on this one would give it an OpenMP team, and every network after it
        # would run ~2x slower (serving.NETWORK_THREAD): the ablation changes then measure 1.5-2.2 s
        model = serving.on_network_thread(lambda: registry.ModelRegistry(ROOT / "weights").get("mnist"))()
        peers = bare_peers(model, ablation_seed=args.repeats - 1)
        timings = run_plan(demo, url, [(0, api_name, list(arguments), delay) for _, api_name, arguments, delay in plan],
                           peers, pause_before)
        results = {}
        for name in [*events, MID_GUESS]:
            server, client, peer, pause = zip(*[timing for (named, *_), timing in zip(plan, timings) if named == name])
            bare = None if peer[0] is None else statistics.median(peer)
            ratio = None if bare is None else statistics.median(s / p for s, p in zip(server, peer))
            results[name] = statistics.median(server), statistics.median(client), bare, ratio
            if name == PREFETCHED:
                pauses = pause

        held_per_session = serving.on_network_thread(session_bytes)(checks.MAX_BATCH) / 2**20
        rounds = []
        for round_number in range(3):
            sessions = range((round_number + 1) * 100, (round_number + 1) * 100 + args.sessions)
            run_plan(demo, url, [(s, "/generate", list(generate_args(s, checks.MAX_BATCH, NO_SKIP_AT_FIRST)), 0) for s in sessions])
            gc.collect()
            rounds.append(rss_mib())
    finally:
        demo.close()

    print(f"host: a guided step of the flagship (batch-2 forward) takes {host[2]:.1f} ms on two threads, {host[1]:.1f} ms on one "
          "(generate runs 50 on one thread each for A and B side by side; an ablation change 50 on two)")
    print(f"cold start to first served page: {cold:.2f} s (target 10 s)")
    print("| event | server-side median (s) | client round trip median (s) | target (s) | within | its networks bare (s) | event / bare |")
    print("|---|---|---|---|---|---|---|")
    for name, (server, client, bare, ratio) in results.items():
        peer = f"{bare:.3f} | {ratio:.3f}" if bare is not None else "– | –"
        print(f"| {name} | {server:.3f} | {client:.3f} | {TARGETS[name]} | {'yes' if server <= TARGETS[name] else 'no'} | {peer} |")
    print("(event / bare: the median over requests of each event's server-side time over its networks run bare just after it; "
          "what the app adds to its networks, whatever the host's speed)")
    print(f"{PREFETCHED}: each sent once the server had computed every run one switch away from the one before, "
          f"which took it {statistics.median(pauses):.1f} s (median; {min(pauses):.1f}-{max(pauses):.1f} s) of idle time")
    print(f"{MID_GUESS}: each sent {args.mid_guess_delay} s after the change before it was answered (and its peer run), "
          "while the server was guessing it")
    print(f"state held per session (A and B, batch {checks.MAX_BATCH}, 50 steps): {held_per_session:.1f} MiB (target 50)")
    print(f"server resident memory after each of three rounds of {args.sessions} new sessions at batch {checks.MAX_BATCH} "
          f"(room for {args.sessions} states): " + ", ".join(f"{r:.0f} MiB" for r in rounds))


if __name__ == "__main__":
    main()
