"""Where the networks of a served page run: one thread for every network, a second one for B beside A, and
the idle-time guesses. Gradio-free: the app, the benchmarks and the tests reach it alike.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from playground.network_thread import NetworkThread, use_threads

# Every network runs on this one thread. PyTorch's OpenMP workers belong to the thread that calls into them: once
# a second thread (Gradio runs each event on one of its worker threads) has its own team, libgomp counts more
# threads than cores, stops spinning between parallel regions, and every convolution waits for its workers to
# wake. Measured on 2 vCPU: generate took 1.5 s on one thread and 3.1 s on a worker thread once another had run
# the model; a batch-16 GIF export on a worker thread took every later guided step from 16-24 ms to 36-38 ms.
# So the events that do not queue here (a scrub, the exports) run with one torch thread (`user_errors`), which
# forms no team. Queued on one thread, the networks also never compete for the cores. While no request waits or
# runs, a second thread (one core, lowest priority, no OpenMP team) computes the runs one switch away from
# what a visitor just saw, or the Generate a visitor's new controls set up (see prefetch_next, prefetch_generate).
NETWORK_THREAD = NetworkThread(thread_name_prefix="networks")


# Runs larger than the page's defaults (50 steps × batch 4) are not guessed at: each would hold a core for seconds.
PREFETCH_MAX_STEPS_X_BATCH = 50 * 4


# A Generate's A and B are guessed taking turns of this many steps (NetworkThread.prefetch), so a click part-way finds
# both part-done; resuming a run costs about a step's time at most.
GENERATE_TURN_STEPS = 5


def on_network_thread(handler):
    """Run `handler` on NETWORK_THREAD (from any thread, with Gradio's context: progress, request) and wait for it."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        if on_a_network_thread():
            return handler(*args, **kwargs)  # already there, or waited on by it: queuing would deadlock
        return NETWORK_THREAD.submit(contextvars.copy_context().run, handler, *args, **kwargs).result()

    return wrapped


def on_a_network_thread() -> bool:
    return threading.current_thread().name.startswith("networks")  # NETWORK_THREAD or PAIR_THREAD, below


# A and B side by side. At batch 1-2 one 28×28 network cannot keep two cores busy (a guided step takes 14 ms
# on two threads, 19 ms on one), so A on the network thread and B on this one, a core each, finish 50 steps of
# both in ~1.0 s instead of ~1.35 s. One-thread work starts no OpenMP team, so the rule above still holds.
PAIR_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="networks-pair")


def _one_core(run):
    use_threads(1)
    return run()


def side_by_side(run_a, run_b):
    """run_a() on this thread and run_b() (if given) on PAIR_THREAD at the same time, one core each."""
    if run_b is None:
        return run_a(), None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        future_b = PAIR_THREAD.submit(contextvars.copy_context().run, _one_core, run_b)
        try:
            a = run_a()
        except BaseException:
            future_b.exception()  # B stops at its own time limit; wait, so no run outlives its request
            raise
        return a, future_b.result()
    finally:
        torch.set_num_threads(threads)
