"""The cache's circuit breaker and per-model auto-disable, as plain state machines."""

from __future__ import annotations

import hashlib

from services.settings import CacheSettings
from services.state.cache_policy import (
    AutoDisable,
    BreakerState,
    CacheState,
    CircuitBreaker,
    HitWindow,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_closes_on_a_good_trial() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, cooldown_s=5.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.allow()
    breaker.record_success()  # a success resets the run of failures
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now += 5.0
    assert breaker.allow()  # the one trial call
    assert breaker.state is BreakerState.HALF_OPEN and not breaker.allow()
    breaker.record_failure()  # a failed trial opens it again for a full cool-down
    assert breaker.state is BreakerState.OPEN
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow() and breaker.allow()


def test_hit_window_slides() -> None:
    window = HitWindow(3)
    assert window.rate is None
    for hit in (True, True, False, False):
        window.add(hit)
    assert (len(window), window.hits, window.rate) == (3, 1, 1 / 3)


def _digest(i: int) -> bytes:
    return hashlib.blake2b(str(i).encode(), digest_size=16).digest()


def test_auto_disable_turns_off_then_back_on_after_min_off_time() -> None:
    clock = FakeClock()
    settings = CacheSettings(
        window=10, min_hit_rate=0.5, probe_window=10, reenable_hit_rate=0.8, min_off_s=60
    )
    seen: list[tuple[str, CacheState]] = []
    policy = AutoDisable(settings, clock, lambda model, state: seen.append((model, state)))
    assert policy.state("m") is CacheState.ON and seen == [("m", CacheState.ON)]
    assert policy.record("m", [False] * 9) == 0.0
    assert policy.state("m") is CacheState.ON  # the window is not full yet
    assert policy.record("m", [False]) == 0.0
    assert policy.state("m") is CacheState.OFF and seen[-1] == ("m", CacheState.OFF)
    assert policy.hit_rate("m") is None  # the probes start afresh
    assert policy.record("m", [True] * 10) == 1.0
    assert policy.state("m") is CacheState.OFF  # min_off_s has not passed
    clock.now += 60
    policy.record("m", [True])
    assert policy.state("m") is CacheState.ON and seen[-1] == ("m", CacheState.ON)
    assert policy.hit_rate("m") is None  # the window starts afresh
    assert policy.state("other") is CacheState.ON  # models are independent


def test_probes_are_a_fixed_share_of_inputs_by_digest() -> None:
    policy = AutoDisable(CacheSettings(probe_rate=0.25), FakeClock())
    digests = [_digest(i) for i in range(4000)]
    probed = [policy.is_probe(d) for d in digests]
    assert 0.2 < sum(probed) / len(probed) < 0.3
    assert probed == [policy.is_probe(d) for d in digests]  # the same inputs every time
