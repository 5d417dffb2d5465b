"""Stopping a backend call from another thread, and the watchdog that does it for inline calls.

A tiny model runs fastest inline on the event loop (a worker-thread hop costs several times
its run time), but a call that then hangs would stall every model on the runner. A backend
that can be stopped from outside (ONNX Runtime: ``RunOptions.terminate``, checked between
graph nodes while the call has released the GIL) takes a ``StopSwitch``; the batcher arms
the ``Watchdog`` with the call's deadline before running it inline, and the watchdog's
thread flips the switch if the call is still running when the deadline passes. The stopped
call raises; the batcher re-runs its requests on a worker thread, under the model's
ordinary timeout, so nothing is lost and the loop was held for at most the deadline plus
one tick.

A call is stopped when it has run past the deadline *and* spent at least half of it on
the CPU of its thread, or when it has run past ``hard_factor`` times the deadline whatever
it did. The CPU condition keeps a healthy call from being stopped because its thread was
descheduled (a busy VM) or waited for the GIL between ``bind`` and the backend's release of
it (other Python threads busy): on a busy host both happen for a few milliseconds now
and then. A call stuck without using the CPU (a lock, a device sync) is still stopped, at the
hard limit.

The watchdog polls (one tick a millisecond) rather than being woken per call: waking a
thread per call is the very hop that inline execution saves. It parks itself after a second
with no armed call, so an idle runner pays nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class StopSwitch:
    """One backend call's stop switch.

    The backend ``bind``s how to stop its call just before starting it (the watchdog counts
    a call's time from there: the Python around it, and waits for the GIL, are not the
    model's); ``stop`` may be called from any thread, before or during the call, and
    ``stopped`` tells afterwards whether it was.
    """

    __slots__ = ("_stop", "stopped", "bound_at", "bound_cpu")

    def __init__(self) -> None:
        self._stop: Callable[[], None] | None = None
        self.stopped = False
        self.bound_at: float | None = None  # time.monotonic() of the last bind
        self.bound_cpu = 0.0  # the binding thread's CPU seconds then

    def bind(self, stop: Callable[[], None]) -> None:
        """Register how to stop the call; stops it at once if ``stop`` came first."""
        self._stop = stop
        self.bound_cpu = time.thread_time()
        self.bound_at = time.monotonic()
        if self.stopped:
            stop()

    def stop(self) -> None:
        """Stop the call (a no-op once it has returned, for the backend's own reasons)."""
        self.stopped = True
        fn = self._stop
        if fn is not None:
            fn()


class Watchdog:
    """Stops the armed call once it has run past its deadline, from a daemon thread.

    One call is armed at a time: inline calls run one after another on the event loop. The
    call's time counts from its switch's ``bind`` (``time.monotonic``), that is from when
    the backend started it.

    Args:
        tick_s: how often the thread looks at the armed call while calls are being armed.
        park_after_s: with no call armed for this long, the thread sleeps until the next.
        hard_factor: a call is stopped past this many deadlines even if it used no CPU.
    """

    def __init__(
        self, *, tick_s: float = 0.001, park_after_s: float = 1.0, hard_factor: float = 10.0
    ) -> None:
        self._tick = tick_s
        self._park_after = park_after_s
        self._hard = hard_factor
        self._clock = time.monotonic
        # (deadline seconds, switch, CPU clock of the calling thread or None)
        self._slot: tuple[float, StopSwitch, int | None] | None = None
        self._cpu_clocks: dict[int, int | None] = {}
        self._armed = 0  # calls armed so far: the thread sees activity by its change
        self._parked = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.stops = 0

    def arm(self, switch: StopSwitch, deadline_s: float) -> None:
        """Watch ``switch``'s call: stop it if it runs longer than ``deadline_s``."""
        ident = threading.get_ident()
        cpu_clock = self._cpu_clocks.get(ident, -1)
        if cpu_clock == -1:
            cpu_clock = self._cpu_clocks[ident] = _cpu_clock(ident)
        self._slot = (deadline_s, switch, cpu_clock)
        self._armed += 1  # before reading _parked: see _run
        if self._thread is None:
            self._start()
        elif self._parked:
            self._parked = False
            self._wake.set()

    def disarm(self) -> None:
        """The armed call returned."""
        self._slot = None

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def _overdue(self, slot: tuple[float, StopSwitch, int | None], now: float) -> bool:
        deadline, switch, cpu_clock = slot
        started = switch.bound_at
        if started is None or now - started < deadline:
            return False
        if cpu_clock is None or now - started >= deadline * self._hard:
            return True
        return time.clock_gettime(cpu_clock) - switch.bound_cpu >= deadline / 2

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="servekit-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen = -1
        active = self._clock()
        while not self._closed:
            slot = self._slot
            now = self._clock()
            if slot is not None and self._overdue(slot, now):
                if self._slot is slot:
                    self._slot = None
                    self.stops += 1
                    slot[1].stop()
            if self._armed != seen:
                seen = self._armed
                active = now
            elif slot is None and now - active > self._park_after:
                self._wake.clear()
                self._parked = True
                # An arm() between our check and here bumped _armed before reading _parked:
                # either we see the bump now, or it saw _parked and set the event.
                if self._armed == seen:
                    self._wake.wait()
                self._parked = False
                active = self._clock()
                continue
            time.sleep(self._tick)


def _cpu_clock(ident: int) -> int | None:
    """The CPU-time clock of thread ``ident`` (None where the platform has none)."""
    try:
        return time.pthread_getcpuclockid(ident)
    except (AttributeError, OSError):
        return None
