"""Finished trajectories kept for every caller (the app's visitors, the idle-time guesses), least recently used out."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

from .sampling import DiffusionModel, SampleSettings, Trajectory, steps_to_copy, sample


class TrajectoryCache:
    """Finished trajectories by (model, settings), shared by every caller, at most `max_bytes` of them.

    A trajectory is a pure function of its model and settings (repeated runs are bit-identical), so one
    computed for one visitor serves the next who asks for the same: the run a page opens on, a lesson, an
    ablation switched off again after a look at another. Least recently used out first. Not kept: settings
    with an h-space edit (edits compare by identity, so no later request would equal them) and trajectories
    larger than the whole budget. Callers must treat a trajectory as read-only: it may be shared.
    A run stopped part-way (`should_stop`: the app's guesses stop for every request, and once new ones replace
    them) is kept as well, within the same budget, and the next `sample` of that run goes on from where it
    stopped; `get` never returns one.
    A caller asking for a run that another is computing with a `should_stop` waits up to `take_over_wait`
    seconds for it to stop (or finish), then goes on from its steps; after that it computes on its own. The
    bound matters: the app's guesses run at the lowest priority, and on busy cores their step could take long.
    Thread-safe; two callers asking for the same new trajectory at once otherwise both compute it.
    """

    def __init__(self, max_bytes: int, take_over_wait: float = 0.25):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a whole number >= 0, got {max_bytes!r}")
        if isinstance(take_over_wait, bool) or not isinstance(take_over_wait, (int, float)) or not 0 <= take_over_wait < math.inf:
            raise ValueError(f"take_over_wait must be a number of seconds >= 0, got {take_over_wait!r}")
        self.max_bytes = max_bytes
        self.take_over_wait = take_over_wait
        self.bytes = 0
        self._stoppable: dict[tuple[int, SampleSettings], threading.Event] = {}  # runs in progress that may stop part-way
        # keyed by the model object's id: its name could be reused by another folder's model; the entry holds the
        # model, so the id cannot be reused while the entry lives
        self._entries: OrderedDict[tuple[int, SampleSettings], tuple[DiffusionModel, Trajectory]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Finished trajectories kept."""
        with self._lock:
            return sum(trajectory.complete for _, trajectory in self._entries.values())

    def get(self, model: DiffusionModel, settings: SampleSettings) -> Trajectory | None:
        with self._lock:
            return self._finished((id(model), settings))

    def _finished(self, key) -> Trajectory | None:  # with the lock held
        entry = self._entries.get(key)
        if entry is None or not entry[1].complete:
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def sample(self, model: DiffusionModel, settings: SampleSettings, progress=None, *,
               reuse: Trajectory | None = None, should_stop=None) -> Trajectory:
        """`sample(model, settings, progress, reuse=reuse, should_stop=should_stop)`, or the trajectory it returned
        before. Without `should_stop` the trajectory is always finished, even if it went on from a stopped one."""
        key = (id(model), settings)
        trajectory, in_progress = self._take(key, stoppable=should_stop is not None)
        if trajectory is None and in_progress is not None:
            in_progress.wait(self.take_over_wait)  # it stops before its next step when it should
            trajectory, in_progress = self._take(key, stoppable=should_stop is not None)
        if trajectory is not None and trajectory.complete:
            return trajectory
        stopped = trajectory  # this caller goes on from it, and keeps whatever it gets to
        registered = should_stop is not None and in_progress is None  # by _take: callers may wait for this run
        try:
            if stopped is not None and (reuse is None or len(stopped) >= steps_to_copy(model, settings, reuse)):
                reuse = stopped
            trajectory = sample(model, settings, progress, reuse=reuse, should_stop=should_stop)
            self._keep(model, settings, trajectory)  # before a waiting caller is woken, so it finds the steps
        except BaseException:
            if stopped is not None:  # the steps it had are still good
                self._keep(model, settings, stopped)
            raise
        finally:
            if registered:
                with self._lock:
                    self._stoppable.pop(key).set()
        return trajectory

    def _take(self, key, stoppable: bool) -> tuple[Trajectory | None, threading.Event | None]:
        """(the finished trajectory, or a stopped one taken out of the cache, or None; the event of a stoppable
        run of `key` in progress elsewhere, or None). A stoppable caller that finds none in progress registers its own."""
        with self._lock:
            finished = self._finished(key)
            if finished is not None:
                return finished, None
            entry = self._entries.pop(key, None)
            if entry is not None:
                self.bytes -= entry[1].nbytes()
            in_progress = self._stoppable.get(key)
            if in_progress is None and stoppable:
                self._stoppable[key] = threading.Event()
            return (None if entry is None else entry[1]), in_progress

    def _keep(self, model: DiffusionModel, settings: SampleSettings, trajectory: Trajectory) -> None:
        size = trajectory.nbytes()
        if settings.h_edit is not None or size > self.max_bytes or len(trajectory) == 0:
            return
        key = (id(model), settings)
        with self._lock:
            kept = self._entries.get(key)
            if kept is not None:
                if len(kept[1]) >= len(trajectory):  # as far along already (a finished one is the furthest)
                    return
                del self._entries[key]
                self.bytes -= kept[1].nbytes()
            self._entries[key] = (model, trajectory)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted.nbytes()
