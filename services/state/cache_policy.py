"""When the prediction cache calls Redis: the circuit breaker and per-model auto-disable.

- :class:`CircuitBreaker` stops calling Redis after ``breaker_failures`` failures in a
  row and lets one trial call through after ``breaker_cooldown_s``.
- :class:`AutoDisable` turns a model's cache off when its hit rate over the last
  ``window`` lookups falls under ``min_hit_rate`` (the lookups then cost more than the
  hits save). A fixed share of inputs (``probe_rate``, chosen by key hash so that repeats
  of a probed input are probed again) is still cached, and when their hit rate reaches
  ``reenable_hit_rate`` (after at least ``min_off_s``) the cache turns back on.

Both are plain state machines: the cache tells them what happened and asks what to do.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.settings import CacheSettings

logger = logging.getLogger(__name__)


class CacheState(enum.Enum):
    """Whether a model's predictions are cached."""

    ON = "on"
    OFF = "off"


class BreakerState(enum.Enum):
    """Circuit breaker states; the gauge exports the value."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """Stops calling a dead Redis; one trial call after the cool-down closes it again.

    Args:
        failures: consecutive failures that open the breaker.
        cooldown_s: how long it stays open before the trial call.
        clock: monotonic seconds.
    """

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float]) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.state = BreakerState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    def allow(self) -> bool:
        """Whether a call may go to Redis now."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.cooldown_s:
                return False
            self.state = BreakerState.HALF_OPEN
            logger.info("cache breaker half-open: trying Redis again")
        if self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        """A call answered in time."""
        self._consecutive = 0
        self._trial_in_flight = False
        if self.state is not BreakerState.CLOSED:
            logger.info("cache breaker closed: Redis answers again")
            self.state = BreakerState.CLOSED

    def record_failure(self) -> None:
        """A call failed or ran past its budget."""
        self._consecutive += 1
        self._trial_in_flight = False
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self._consecutive >= self.failures
        ):
            if self.state is BreakerState.CLOSED:
                logger.warning(
                    "cache breaker open after %d failures; predictions go uncached",
                    self._consecutive,
                )
            self.state = BreakerState.OPEN
            self._opened_at = self._clock()


class HitWindow:
    """Hit/miss outcomes of the last ``size`` lookups."""

    def __init__(self, size: int) -> None:
        self._outcomes: deque[bool] = deque(maxlen=size)
        self.hits = 0

    def add(self, hit: bool) -> None:
        """Count one lookup, forgetting the oldest once the window is full."""
        if len(self._outcomes) == self._outcomes.maxlen and self._outcomes[0]:
            self.hits -= 1
        self._outcomes.append(hit)
        self.hits += hit

    def __len__(self) -> int:
        return len(self._outcomes)

    @property
    def rate(self) -> float | None:
        """Hits per lookup in the window; None before any lookup."""
        return self.hits / len(self._outcomes) if self._outcomes else None


class _ModelState:
    """One model's on/off state and hit-rate windows."""

    def __init__(self, window: int, probe_window: int) -> None:
        self.state = CacheState.ON
        self.off_since = 0.0
        self.window = HitWindow(window)
        self.probes = HitWindow(probe_window)


StateListener = Callable[[str, CacheState], None]
"""Told the model and its state when a model is first seen and on every switch."""


class AutoDisable:
    """Per model: the cache turns off while its hit rate stays low, and back on.

    Args:
        settings: the cache settings (window sizes, thresholds, probe rate, min off time).
        clock: monotonic seconds, for the minimum off time.
        on_state: told of each model's state when first seen and on every switch.
    """

    def __init__(
        self,
        settings: CacheSettings,
        clock: Callable[[], float],
        on_state: StateListener | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._on_state = on_state
        self._probe_cut = int(settings.probe_rate * 2**32)
        self._models: dict[str, _ModelState] = {}

    def state(self, model: str) -> CacheState:
        """Whether ``model``'s cache is on."""
        return self._model(model).state

    def hit_rate(self, model: str) -> float | None:
        """Hit rate over the current window (the probes' while off); None before any lookup."""
        m = self._model(model)
        return (m.window if m.state is CacheState.ON else m.probes).rate

    def is_probe(self, digest: bytes) -> bool:
        """Whether an input (by its row digest) is still cached while its model's is off."""
        return int.from_bytes(digest[:4], "little") < self._probe_cut

    def record(self, model: str, outcomes: list[bool]) -> float | None:
        """Count lookups' hits; switch the model's cache off or on when due.

        Returns the hit rate of the window the lookups went into (before any switch).
        """
        m = self._model(model)
        if m.state is CacheState.ON:
            for hit in outcomes:
                m.window.add(hit)
            rate = m.window.rate
            if self._should_turn_off(m, rate):
                self._switch(model, m, CacheState.OFF, rate)
            return rate
        for hit in outcomes:
            m.probes.add(hit)
        rate = m.probes.rate
        if self._should_turn_on(m, rate):
            self._switch(model, m, CacheState.ON, rate)
        return rate

    def _should_turn_off(self, m: _ModelState, rate: float | None) -> bool:
        s = self._settings
        return len(m.window) >= s.window and rate is not None and rate < s.min_hit_rate

    def _should_turn_on(self, m: _ModelState, rate: float | None) -> bool:
        s = self._settings
        return (
            len(m.probes) >= s.probe_window
            and rate is not None
            and rate >= s.reenable_hit_rate
            and self._clock() - m.off_since >= s.min_off_s
        )

    def _switch(self, model: str, m: _ModelState, state: CacheState, rate: float | None) -> None:
        s = self._settings
        if state is CacheState.OFF:
            logger.warning(
                "prediction cache OFF for model %s: hit rate %.3f < %.3f over %d lookups",
                model,
                rate,
                s.min_hit_rate,
                len(m.window),
            )
            m.off_since = self._clock()
            m.probes = HitWindow(s.probe_window)
        else:
            logger.warning(
                "prediction cache ON for model %s: probed hit rate %.3f >= %.3f",
                model,
                rate,
                s.reenable_hit_rate,
            )
            m.window = HitWindow(s.window)
        m.state = state
        if self._on_state is not None:
            self._on_state(model, state)

    def _model(self, model: str) -> _ModelState:
        m = self._models.get(model)
        if m is None:
            m = self._models[model] = _ModelState(
                self._settings.window, self._settings.probe_window
            )
            if self._on_state is not None:
                self._on_state(model, m.state)
        return m
