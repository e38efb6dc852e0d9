"""One thread for every network request, and a second one that uses the idle time for the runs asked for next.

A visitor who has just seen B with the 14×14 skips off will likely switch another part off next. Each such run
takes a second or more on two cores, but the server is idle while the visitor looks at the pictures. So a
handler names the runs one switch away (`prefetch`), and they are computed into the shared `TrajectoryCache`
while no request is waiting or running; the switch, when it comes, is answered from the cache.

Requests always come first. A prefetch stops before its next step the moment a request is submitted (or new wishes
replace its own), and keeps the steps it has done in the cache: it goes on from them once no request is left, and a
request for that very run goes on from them at once, on both cores (a visitor who switches before the guess is
finished waits only for the steps left; `TrajectoryCache.sample` has it wait for the guess's step in progress,
within a bound). It runs on one core at the lowest scheduling priority: at normal priority, Gradio's threads that
encode a scrub's pictures lost the cores to it (a scrub took 62 ms server side instead of 37; at the lowest, 33-39
ms). A trajectory is a pure function of model and settings, bit for bit on one thread or two (`unet.PointwiseConv`;
a test checks it), so a prefetched run is the run the request would have computed.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from .sampling import DiffusionModel, SampleSettings
from .trajectories import TrajectoryCache

logger = logging.getLogger(__name__)

LOWEST_PRIORITY = 19  # the largest nice value Linux allows; any thread may raise its own


def use_threads(count: int) -> None:
    """Set the calling thread's torch thread count (OpenMP's and MKL's, both per thread), for good.

    A thread's first parallel operation resets its count to the one last set by *any* thread (ATen initialises
    each thread lazily from a process-wide value), so that first initialisation is forced here, then overridden."""
    torch.get_num_threads()
    torch.set_num_threads(count)


class NetworkThread:
    """Requests on one worker thread, in order; wishes on another, only while no request is waiting or running.

    submit(fn, ...): a request. It runs at once unless another request is before it.
    prefetch(cache, [(model, settings), ...], turn_steps=None): wishes, most likely first (at most `max_wishes`);
        they replace the earlier ones, and a run already in the cache is skipped. With `turn_steps`, the runs take
        turns of that many steps instead of running one after the other.
    The networks of one request may use both cores (an OpenMP team); a prefetch uses one thread, which forms
    no team, so the two never make libgomp think it has more threads than cores.
    """

    def __init__(self, thread_name_prefix: str, max_wishes: int = 16):
        """Requests run on as many threads as the constructing thread has now."""
        if isinstance(max_wishes, bool) or not isinstance(max_wishes, int) or max_wishes < 0:
            raise ValueError(f"max_wishes must be a whole number >= 0, got {max_wishes!r}")
        self.max_wishes = max_wishes
        self._name = thread_name_prefix
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name_prefix)
        self._executor.submit(use_threads, torch.get_num_threads())  # not whatever the prefetch thread set last
        self._changed = threading.Condition()
        self._requests = 0  # submitted and not finished
        self._wishes: deque[tuple[TrajectoryCache, DiffusionModel, SampleSettings, int | None]] = deque()
        self._wish_lists = 0  # how many times the wishes were replaced: a stopped guess goes back only to its own list
        self._prefetching = False
        self._exiting = False
        self._prefetcher: threading.Thread | None = None  # started with the first wish
        self.prefetched = 0  # runs computed and kept (for benchmarks and tests)

    def submit(self, fn, /, *args, **kwargs) -> Future:
        with self._changed:
            self._requests += 1
        return self._executor.submit(self._request, fn, args, kwargs)

    def prefetch(self, cache: TrajectoryCache, runs: list[tuple[DiffusionModel, SampleSettings]],
                 turn_steps: int | None = None) -> None:
        """turn_steps: for runs that a request computes side by side (a Generate's A and B), where the run with the
        most steps left sets the pace. One after the other, a request that came part-way would find A well on and
        B not begun; taking turns, it finds both part-way."""
        if turn_steps is not None and (isinstance(turn_steps, bool) or not isinstance(turn_steps, int) or turn_steps < 1):
            raise ValueError(f"turn_steps must be None or a whole number >= 1, got {turn_steps!r}")
        with self._changed:
            # the earlier wishes were about a state its visitor has left (or, on a busy server, another visitor's,
            # and a busy server has no idle time to spend on them anyway)
            self._wishes = deque((cache, model, settings, turn_steps) for model, settings in runs[: self.max_wishes])
            self._wish_lists += 1
            if self._prefetcher is None:
                # a daemon, so exit never waits for a guess; but stopped at its next step before the interpreter
                # is torn down under it (torch aborts the process if a thread is still inside it then)
                self._prefetcher = threading.Thread(target=self._prefetch_forever, name=f"{self._name}-prefetch", daemon=True)
                self._prefetcher.start()
                atexit.register(self._stop_prefetching)
            self._changed.notify_all()

    @property
    def wishes(self) -> int:
        return len(self._wishes)

    def idle(self) -> bool:
        """No request waiting or running, no wish left, no prefetch running."""
        with self._changed:
            return self._idle()

    def wait_until_idle(self, timeout: float) -> bool:
        """Block until idle() (True) or `timeout` seconds have passed (False)."""
        with self._changed:
            return self._changed.wait_for(self._idle, timeout)

    def _idle(self) -> bool:  # with the lock held
        return not (self._requests or self._wishes or self._prefetching)

    def _request(self, fn, args, kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            with self._changed:
                self._requests -= 1
                self._changed.notify_all()

    def _stop_prefetching(self) -> None:
        with self._changed:
            self._exiting = True
            self._changed.notify_all()
        self._prefetcher.join(timeout=30)

    def _prefetch_forever(self) -> None:
        use_threads(1)
        if sys.platform.startswith("linux"):  # on Linux a thread's id names it to setpriority; elsewhere it would be the process
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
            except OSError:  # a sandbox that forbids it: guesses at normal priority still stop for every request
                logger.warning("could not lower the prefetch thread's priority", exc_info=True)
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._exiting or (self._wishes and not self._requests))
                if self._exiting:
                    return
                wish = self._wishes.popleft()
                wish_list = self._wish_lists
                self._prefetching = True
            cache, model, settings, turn_steps = wish
            stopped, give_way = False, _GiveWay(self, wish_list, cache, model, settings, turn_steps)
            try:
                if cache.get(model, settings) is None:
                    stopped = not cache.sample(model, settings, should_stop=give_way).complete
                    self.prefetched += not stopped
            except Exception:  # a failed guess costs nothing: the request, if it comes, reports its own error
                logger.debug("prefetch of %s failed", settings, exc_info=True)
            finally:
                with self._changed:
                    if stopped and wish_list == self._wish_lists:  # still wished for: it goes on from where it stopped,
                        if give_way.turn_over:  # after the other runs' turns
                            self._wishes.append(wish)
                        else:  # first again
                            self._wishes.appendleft(wish)
                    self._prefetching = False
                    self._changed.notify_all()


class _GiveWay:
    """A prefetch's `should_stop`, asked before each of its steps: a request came, the interpreter is exiting, new
    wishes replaced the run's (a request that named them may have come and gone between two steps: the visitor moved
    on, and a 50-step guess at batch 4 held the core for ~3.6 s more), or a request kept this very run meanwhile
    (one that did not wait for the guess's step to end); or, with `turn_steps`, the run has had its turn."""

    def __init__(self, thread: NetworkThread, wish_list: int, cache: TrajectoryCache, model: DiffusionModel,
                 settings: SampleSettings, turn_steps: int | None):
        self.thread, self.wish_list, self.cache, self.model, self.settings = thread, wish_list, cache, model, settings
        self.steps_left = turn_steps

    def __call__(self) -> bool:
        thread = self.thread
        if (thread._requests or thread._exiting or thread._wish_lists != self.wish_list
                or self.cache.get(self.model, self.settings) is not None):
            return True
        if self.steps_left is None:
            return False
        self.steps_left -= 1
        return self.steps_left < 0

    @property
    def turn_over(self) -> bool:
        return self.steps_left is not None and self.steps_left < 0
