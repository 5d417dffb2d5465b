"""The watchdog stops an armed call past its deadline, leaves a call that returned in time
alone, and parks when idle without missing the next call."""

from __future__ import annotations

import threading
import time

from services.runner.watchdog import StopSwitch, Watchdog


def test_a_switch_stopped_before_binding_stops_at_bind() -> None:
    switch = StopSwitch()
    switch.stop()
    hits: list[str] = []
    switch.bind(lambda: hits.append("stop"))
    assert switch.stopped and hits == ["stop"]


def test_a_call_burning_cpu_past_its_deadline_is_stopped_soon_after() -> None:
    dog = Watchdog(tick_s=0.001)  # hard limit: 10 deadlines = 300 ms
    switch = StopSwitch()
    dog.arm(switch, 0.03)
    t0 = time.monotonic()
    switch.bind(lambda: None)
    while not switch.stopped and time.monotonic() - t0 < 2:
        sum(range(1000))  # a call spinning on this thread's CPU
    waited = time.monotonic() - t0
    assert switch.stopped
    assert waited < 0.25, f"stopped after {waited * 1000:.0f} ms: not by the CPU rule"
    dog.close()


def test_a_call_off_the_cpu_is_stopped_only_at_the_hard_limit() -> None:
    """Descheduled, or waiting for the GIL: not the model's fault, until 10 deadlines."""
    dog = Watchdog(tick_s=0.001)
    switch = StopSwitch()
    stopped = threading.Event()
    dog.arm(switch, 0.02)
    t0 = time.monotonic()
    switch.bind(stopped.set)
    assert not stopped.wait(0.12), "stopped a call that used no CPU before the hard limit"
    assert stopped.wait(2)
    waited = time.monotonic() - t0
    assert 0.2 <= waited < 1.0
    dog.close()


def test_a_call_past_its_deadline_is_stopped_soon_after() -> None:
    dog = Watchdog(tick_s=0.001)
    stopped = threading.Event()
    switch = StopSwitch()
    t0 = time.monotonic()
    dog.arm(switch, 0.02)
    switch.bind(stopped.set)
    assert stopped.wait(2)
    waited = time.monotonic() - t0
    assert waited >= 0.02
    assert waited < 0.5, f"stopped {waited * 1000:.0f} ms after arming (deadline 20 ms)"
    assert switch.stopped and dog.stops == 1
    dog.close()


def test_time_counts_from_the_start_of_the_backend_call() -> None:
    dog = Watchdog(tick_s=0.001)
    switch = StopSwitch()
    dog.arm(switch, 0.01)
    time.sleep(0.05)  # Python before the backend call (or a wait for the GIL)
    assert not switch.stopped
    stopped = threading.Event()
    switch.bind(stopped.set)
    assert stopped.wait(2) and switch.stopped
    dog.close()


def test_a_call_that_returns_in_time_is_left_alone() -> None:
    dog = Watchdog(tick_s=0.001)
    switches = []
    for _ in range(200):
        switch = StopSwitch()
        switches.append(switch)
        dog.arm(switch, 0.2)
        switch.bind(lambda: None)
        dog.disarm()
    time.sleep(0.3)
    assert not any(s.stopped for s in switches) and dog.stops == 0
    dog.close()


def test_a_parked_watchdog_wakes_for_the_next_call() -> None:
    dog = Watchdog(tick_s=0.001, park_after_s=0.02)
    first = StopSwitch()
    dog.arm(first, 10)
    dog.disarm()
    for _ in range(200):  # until the thread has parked
        if dog._parked:
            break
        time.sleep(0.005)
    assert dog._parked
    late = StopSwitch()
    stopped = threading.Event()
    dog.arm(late, 0.01)
    late.bind(stopped.set)
    assert stopped.wait(2), "a parked watchdog missed the next armed call"
    assert not first.stopped
    dog.close()
