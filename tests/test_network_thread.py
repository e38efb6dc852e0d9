"""The network thread: requests in order and first; in the idle time, the runs a visitor may ask for next."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from playground import Ablation, SampleSettings, TrajectoryCache, sample
from playground.network_thread import LOWEST_PRIORITY, NetworkThread


@pytest.fixture
def network_thread():
    return NetworkThread(thread_name_prefix="test-networks")


def settings_for(seeds, steps=4):
    return [SampleSettings(steps=steps, batch=1, label=None, seed=seed) for seed in seeds]


def runs_of(model, settings):
    return [(model, s) for s in settings]


def _no_forward(*args, **kwargs):
    raise AssertionError("the model ran")


def recording_forward(model, monkeypatch, before_each=None):
    """Calls of the model's forward from now on: (thread name, its torch thread count), in order."""
    calls, real_forward = [], model.unet.forward

    def forward(*args, **kwargs):
        if before_each is not None:
            before_each()
        calls.append((threading.current_thread().name, torch.get_num_threads()))
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model.unet, "forward", forward)
    return calls


def first_step_held():
    """(in_first_step, finish_first_step, before_each): the first forward sets the one and waits for the other."""
    in_first_step, finish_first_step = threading.Event(), threading.Event()

    def hold_the_first_step():
        if not in_first_step.is_set():
            in_first_step.set()
            finish_first_step.wait(10)

    return in_first_step, finish_first_step, hold_the_first_step


def prefetch_step_held(step):
    """(held, release, before_each): the prefetch thread's `step`-th forward (from 1) sets `held`, then waits for `release`."""
    held, release, count = threading.Event(), threading.Event(), itertools.count(1)

    def hold_the_prefetch():
        if threading.current_thread().name.endswith("prefetch") and next(count) == step:
            held.set()
            release.wait(10)

    return held, release, hold_the_prefetch


def test_wishes_are_computed_in_idle_time_exactly_as_a_request_would_compute_them(model, network_thread):
    cache = TrajectoryCache(max_bytes=2**22)
    wishes = settings_for(range(3))
    network_thread.prefetch(cache, runs_of(model, wishes))
    assert network_thread.wait_until_idle(timeout=60)
    assert network_thread.prefetched == 3 and len(cache) == 3
    for settings in wishes:
        kept = cache.get(model, settings)
        assert torch.equal(kept.x_t, sample(model, settings).x_t) and torch.equal(kept.eps, sample(model, settings).eps)


def test_runs_wished_with_turn_steps_take_turns_and_end_as_a_request_would_compute_them(model, network_thread, monkeypatch):
    """A Generate's A and B, which a request runs side by side: one clicked part-way finds both part-done."""
    cache, turns, real_sample = TrajectoryCache(max_bytes=2**22), [], TrajectoryCache.sample

    def recording_sample(self, model, settings, *args, **kwargs):
        trajectory = real_sample(self, model, settings, *args, **kwargs)
        turns.append((settings.seed, len(trajectory)))
        return trajectory

    monkeypatch.setattr(TrajectoryCache, "sample", recording_sample)
    wishes = settings_for([0, 1], steps=5)
    network_thread.prefetch(cache, runs_of(model, wishes), turn_steps=2)
    assert network_thread.wait_until_idle(timeout=60)
    assert turns == [(0, 2), (1, 2), (0, 4), (1, 4), (0, 5), (1, 5)]  # steps done after each turn
    assert network_thread.prefetched == 2
    for settings in wishes:
        assert torch.equal(cache.get(model, settings).x_t, sample(model, settings).x_t)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_a_bad_turn_length_is_refused_by_name(network_thread, bad):
    with pytest.raises(ValueError, match="turn_steps"):
        network_thread.prefetch(TrajectoryCache(max_bytes=2**22), [], turn_steps=bad)


def test_a_run_already_kept_is_not_computed_again(model, network_thread, monkeypatch):
    cache = TrajectoryCache(max_bytes=2**22)
    settings = settings_for([0])
    cache.sample(model, settings[0])
    monkeypatch.setattr(model.unet, "forward", _no_forward)
    network_thread.prefetch(cache, runs_of(model, settings))
    assert network_thread.wait_until_idle(timeout=60)
    assert network_thread.prefetched == 0


def test_a_request_does_not_wait_for_a_prefetch_which_stops_and_later_goes_on_from_its_steps(model, network_thread, monkeypatch):
    cache = TrajectoryCache(max_bytes=2**22)
    in_first_step, finish_first_step, hold_the_first_step = first_step_held()
    calls = recording_forward(model, monkeypatch, before_each=hold_the_first_step)
    settings = settings_for([0], steps=12)[0]
    network_thread.prefetch(cache, runs_of(model, [settings]))
    assert in_first_step.wait(10)
    assert network_thread.submit(lambda: "answered").result(timeout=10) == "answered"  # while the step is held
    request_done = threading.Event()
    running = network_thread.submit(request_done.wait, 10)
    finish_first_step.set()
    assert not network_thread.wait_until_idle(timeout=0.3)
    assert len(calls) == 1  # the step in progress finished; the next waits for the request
    request_done.set()
    running.result(10)
    assert network_thread.wait_until_idle(timeout=60)
    assert len(calls) == 12 and network_thread.prefetched == 1  # went on where it stopped: no step run twice
    assert torch.equal(cache.get(model, settings).x_t, sample(model, settings).x_t)


def test_a_request_for_the_run_a_prefetch_is_computing_goes_on_from_its_steps(model, network_thread, monkeypatch):
    cache = TrajectoryCache(max_bytes=2**22, take_over_wait=10)  # as long as a loaded test machine may need
    settings = settings_for([0], steps=12)[0]
    in_fourth_step, request_may_run, hold_the_prefetch = prefetch_step_held(4)
    calls = recording_forward(model, monkeypatch, before_each=hold_the_prefetch)
    network_thread.prefetch(cache, runs_of(model, [settings]))
    assert in_fourth_step.wait(10)
    request = network_thread.submit(cache.sample, model, settings)
    request_may_run.set()
    kept = request.result(10)
    assert network_thread.wait_until_idle(timeout=60)
    assert [name.endswith("prefetch") for name, _ in calls] == [True] * 4 + [False] * 8
    assert kept.complete and cache.get(model, settings) is kept and network_thread.prefetched == 0
    full = sample(model, settings)
    for name in ("x_t", "eps", "x0"):
        assert torch.equal(getattr(kept, name), getattr(full, name)), name


def test_a_request_waits_for_the_guess_of_its_run_only_so_long_then_computes_on_its_own(model, network_thread, monkeypatch):
    cache = TrajectoryCache(max_bytes=2**22, take_over_wait=0.1)
    settings = settings_for([0], steps=12)[0]
    held, release, hold_the_prefetch = prefetch_step_held(4)  # as the lowest priority could on busy cores
    calls = recording_forward(model, monkeypatch, before_each=hold_the_prefetch)
    network_thread.prefetch(cache, runs_of(model, [settings]))
    assert held.wait(10)
    kept = network_thread.submit(cache.sample, model, settings).result(10)  # while the guess's step is held
    assert kept.complete and [name.endswith("prefetch") for name, _ in calls] == [True] * 3 + [False] * 12  # 4th: held
    release.set()
    assert network_thread.wait_until_idle(timeout=60)
    assert len(calls) == 16 and cache.get(model, settings) is kept  # the guess stopped: its run was kept meanwhile
    assert torch.equal(kept.x_t, sample(model, settings).x_t)


def test_a_stopped_prefetch_the_visitor_moved_on_from_is_dropped(model, network_thread, monkeypatch):
    cache = TrajectoryCache(max_bytes=2**22)
    in_first_step, finish_first_step, hold_the_first_step = first_step_held()
    calls = recording_forward(model, monkeypatch, before_each=hold_the_first_step)
    left, next_wish = settings_for([0, 1], steps=6)
    network_thread.prefetch(cache, runs_of(model, [left]))
    assert in_first_step.wait(10)
    gate = threading.Event()
    request = network_thread.submit(gate.wait, 10)  # stops the prefetch after its step in progress ...
    network_thread.prefetch(cache, runs_of(model, [next_wish]))  # ... and before it stopped, new wishes came
    finish_first_step.set()
    assert not network_thread.wait_until_idle(timeout=0.3)  # the held step ends, and the prefetch stops
    gate.set()
    request.result(10)
    assert network_thread.wait_until_idle(timeout=60)
    assert len(calls) == 1 + 6 and cache.get(model, left) is None and cache.get(model, next_wish) is not None


def test_a_prefetch_whose_wishes_were_replaced_stops_at_its_next_step_and_keeps_its_steps(model, network_thread, monkeypatch):
    """Even when no request is there to stop it (the one that named the new wishes came and went within a step)."""
    cache = TrajectoryCache(max_bytes=2**22)
    held, release, hold_the_second_step = prefetch_step_held(2)
    calls = recording_forward(model, monkeypatch, before_each=hold_the_second_step)
    left, next_wish = settings_for([0, 1], steps=6)
    network_thread.prefetch(cache, runs_of(model, [left]))
    assert held.wait(10)
    network_thread.prefetch(cache, runs_of(model, [next_wish]))
    release.set()
    assert network_thread.wait_until_idle(timeout=60)
    assert len(calls) == 2 + 6 and cache.get(model, left) is None and cache.get(model, next_wish) is not None
    assert len(cache.sample(model, left, should_stop=lambda: True)) == 2  # its two steps were kept


def test_no_prefetch_starts_while_a_request_waits_or_runs(model, network_thread, monkeypatch):
    cache = TrajectoryCache(max_bytes=2**22)
    gate, order = threading.Event(), []
    first = network_thread.submit(lambda: gate.wait(10) and order.append(("first", len(cache))))
    network_thread.prefetch(cache, runs_of(model, settings_for([0])))  # posted while a request runs ...
    second = network_thread.submit(lambda: order.append(("second", len(cache))))  # ... and another waits
    assert not network_thread.wait_until_idle(timeout=0.3)
    gate.set()
    first.result(10), second.result(10)
    assert order == [("first", 0), ("second", 0)]
    assert network_thread.wait_until_idle(timeout=60) and len(cache) == 1


def test_the_latest_wishes_replace_the_earlier_ones_and_at_most_max_wishes_are_kept(model, monkeypatch):
    network_thread = NetworkThread(thread_name_prefix="test-networks", max_wishes=3)
    cache = TrajectoryCache(max_bytes=2**22)
    gate = threading.Event()
    busy = network_thread.submit(gate.wait, 10)  # no prefetch starts while the wishes arrive
    network_thread.prefetch(cache, runs_of(model, settings_for(range(3))))  # about a state the visitor has left
    network_thread.prefetch(cache, runs_of(model, settings_for(range(3, 7))))
    assert network_thread.wishes == 3
    computed = []
    real_sample = cache.sample
    monkeypatch.setattr(cache, "sample", lambda model, settings, *a, **k: computed.append(settings.seed) or real_sample(model, settings, *a, **k))
    gate.set()
    busy.result(10)
    assert network_thread.wait_until_idle(timeout=60)
    assert computed == [3, 4, 5]


def test_a_wish_that_fails_is_dropped_and_the_others_still_run(model, network_thread):
    cache = TrajectoryCache(max_bytes=2**22)
    impossible = SampleSettings(steps=4, batch=1, label=None, ablation=Ablation(attention_off=["no.such.site"]))
    good = settings_for([1])[0]
    network_thread.prefetch(cache, runs_of(model, [impossible, good]))
    assert network_thread.wait_until_idle(timeout=60)
    assert cache.get(model, impossible) is None and cache.get(model, good) is not None


def test_prefetches_run_on_one_thread_of_their_own_at_the_lowest_priority(model, network_thread, monkeypatch):
    cache = TrajectoryCache(max_bytes=2**22)
    calls = recording_forward(model, monkeypatch)
    network_thread.submit(torch.set_num_threads, 2).result(10)
    network_thread.prefetch(cache, runs_of(model, settings_for([0])))
    assert network_thread.wait_until_idle(timeout=60)
    assert set(calls) == {("test-networks-prefetch", 1)}
    assert network_thread.submit(torch.get_num_threads).result(10) == 2  # the requests' thread keeps its count
    if sys.platform.startswith("linux"):
        prefetcher = network_thread._prefetcher.native_id
        assert os.getpriority(os.PRIO_PROCESS, prefetcher) == LOWEST_PRIORITY
        assert os.getpriority(os.PRIO_PROCESS, network_thread.submit(threading.get_native_id).result(10)) < LOWEST_PRIORITY


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_a_bad_wish_count_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="max_wishes"):
        NetworkThread(thread_name_prefix="test-networks", max_wishes=bad)


EXIT_DURING_A_PREFETCH = """
import sys, time
from playground import SampleSettings, TrajectoryCache, load_pipeline
from playground.network_thread import NetworkThread
model = load_pipeline(sys.argv[1])
network_thread = NetworkThread(thread_name_prefix="networks")
network_thread.prefetch(TrajectoryCache(2**24), [(model, SampleSettings(steps=500, batch=4, label=None, seed=s)) for s in range(9)])
time.sleep(0.5)
print("prefetching at exit:", not network_thread.idle())
"""


def test_the_interpreter_exits_cleanly_in_the_middle_of_a_prefetch(weights):
    # torch aborts the process ("terminate called without an active exception") if a thread is still in it when
    # the interpreter is torn down; the prefetch stops at its next step instead
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", EXIT_DURING_A_PREFETCH, str(weights / "tiny")], cwd=root, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(root)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "prefetching at exit: True" in done.stdout and "terminate called" not in done.stderr
