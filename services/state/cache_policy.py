"""When the prediction cache calls Redis: the circuit breaker and per-model auto-disable.

- :class:`CircuitBreaker` stops calling Redis after ``breaker_failures`` failures in a
  row and lets one trial call through after ``breaker_cooldown_s``.
- :class:`AutoDisable` turns a model's cache off when its hit rate over the last
  ``window`` lookups falls under ``min_hit_rate`` (the lookups then cost more than the
  hits save). A fixed share of inputs (``probe_rate``, chosen by key hash so that repeats
  of a probed input are probed again) is still cached, and when their hit rate reaches
  ``reenable_hit_rate`` (after at least ``min_off_s``) the cache turns back on.
- :class:`CpuCosts` keeps, per model, the CPU a hit saves (the runner's CPU per row, as
  the model pool measures it, plus the gateway's own work on a computed row) and the CPU
  the cache spends per looked-up row (hashing, encoding, the Redis client's work; see
  ``services.state.cpu_meter``). With ``cost_policy`` on, AutoDisable also turns a model's
  cache off when hit rate x saved CPU falls under ``cost_off_ratio`` x spent CPU, and only
  back on when the probes show it at ``cost_on_ratio`` or more: a cache whose lookups cost
  more CPU than the inference they skip (a tiny model) stays off at any hit rate.

All are plain state machines: the cache tells them what happened and asks what to do.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from services.state.cpu_meter import PerRow

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


RunnerCost = Callable[[str], "float | None"]
"""A model's runner CPU seconds per row (None: not known, e.g. a remote runner)."""


class CpuCosts:
    """Per model: CPU seconds a cache hit saves and CPU seconds a lookup costs, per row.

    Args:
        runner_cost: the model runner's CPU seconds per row of a model (None: unknown,
            and then the costs decide nothing).
    """

    def __init__(self, runner_cost: RunnerCost | None = None) -> None:
        self.runner_cost = runner_cost
        self._spent: dict[str, PerRow] = {}
        self._computed: dict[str, PerRow] = {}
        self.client_read = PerRow()  # the Redis client's CPU per key read
        self.client_write = PerRow()  # ... and per key written

    def add_lookup(self, model: str, own_cpu_s: float, looked: int, written: int) -> None:
        """One request's cache work: its own CPU, rows looked up and rows written back."""
        read, write = self.client_read.value or 0.0, self.client_write.value or 0.0
        total = own_cpu_s + looked * read + written * write
        self._spent.setdefault(model, PerRow()).add(total, looked)

    def add_compute(self, model: str, cpu_s: float, rows: int) -> None:
        """The gateway's own CPU computing ``rows`` missed rows (tokenizing, decoding)."""
        self._computed.setdefault(model, PerRow()).add(cpu_s, rows)

    def spent_per_row(self, model: str) -> float | None:
        """The cache's CPU seconds per looked-up row (writes of misses included)."""
        spent = self._spent.get(model)
        return None if spent is None else spent.value

    def saved_per_hit(self, model: str) -> float | None:
        """CPU seconds one hit saves: the runner's per row plus the gateway's own."""
        runner = self.runner_cost(model) if self.runner_cost is not None else None
        if runner is None:
            return None
        computed = self._computed.get(model)
        return runner + ((computed.value or 0.0) if computed is not None else 0.0)

    def rows_seen(self, model: str) -> int:
        """Looked-up rows measured so far."""
        spent = self._spent.get(model)
        return 0 if spent is None else spent.rows_seen

    def benefit(self, model: str, hit_rate: float | None, min_rows: int) -> float | None:
        """Expected saved / spent CPU per looked-up row; None until both are known."""
        saved, spent = self.saved_per_hit(model), self.spent_per_row(model)
        if hit_rate is None or saved is None or spent is None or self.rows_seen(model) < min_rows:
            return None
        return hit_rate * saved / max(spent, 1e-9)


class _ModelState:
    """One model's on/off state, hit-rate windows and why it last switched."""

    def __init__(self, window: int, probe_window: int) -> None:
        self.state = CacheState.ON
        self.reason = "start"
        self.off_since = 0.0
        self.window = HitWindow(window)
        self.probes = HitWindow(probe_window)


StateListener = Callable[[str, CacheState], None]
"""Told the model and its state when a model is first seen and on every switch."""


class AutoDisable:
    """Per model: the cache turns off while its hit rate (or its CPU benefit) stays low,
    and back on when the probes show it pays again.

    Args:
        settings: the cache settings (windows, thresholds, probe rate, min off time, costs).
        clock: monotonic seconds, for the minimum off time.
        on_state: told of each model's state when first seen and on every switch.
        costs: the CPU costs (default: none known, so only the hit rate decides).
    """

    def __init__(
        self,
        settings: CacheSettings,
        clock: Callable[[], float],
        on_state: StateListener | None = None,
        costs: CpuCosts | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._on_state = on_state
        self.costs = costs if costs is not None else CpuCosts()
        self._probe_cut = int(settings.probe_rate * 2**32)
        self._cost_probe_cut = int(min(settings.cost_probe_rate, settings.probe_rate) * 2**32)
        self._models: dict[str, _ModelState] = {}

    def state(self, model: str) -> CacheState:
        """Whether ``model``'s cache is on."""
        return self._model(model).state

    def reason(self, model: str) -> str:
        """Why the model's cache is in its state: start, hit_rate, cost or probes."""
        return self._model(model).reason

    def hit_rate(self, model: str) -> float | None:
        """Hit rate over the current window (the probes' while off); None before any lookup."""
        m = self._model(model)
        return (m.window if m.state is CacheState.ON else m.probes).rate

    def benefit(self, model: str) -> float | None:
        """Expected saved / spent CPU per looked-up row at the current hit rate (None:
        the costs are not known yet, or the cost policy is off)."""
        if not self._settings.cost_policy:
            return None
        return self.costs.benefit(model, self.hit_rate(model), self._settings.cost_min_rows)

    def is_probe(self, digest: bytes, model: str | None = None) -> bool:
        """Whether an input (by its row digest) is still cached while its model's is off
        (fewer while ``model``'s cache is off for cost: each probe is a full lookup)."""
        cut = self._probe_cut
        if model is not None and self._model(model).reason == "cost":
            cut = self._cost_probe_cut
        return int.from_bytes(digest[:4], "little") < cut

    def record(self, model: str, outcomes: list[bool]) -> float | None:
        """Count lookups' hits; switch the model's cache off or on when due.

        Returns the hit rate of the window the lookups went into (before any switch).
        """
        m = self._model(model)
        if m.state is CacheState.ON:
            for hit in outcomes:
                m.window.add(hit)
            rate = m.window.rate
            reason = self._off_reason(model, m, rate)
            if reason is not None:
                self._switch(model, m, CacheState.OFF, rate, reason)
            return rate
        for hit in outcomes:
            m.probes.add(hit)
        rate = m.probes.rate
        if self._should_turn_on(model, m, rate):
            self._switch(model, m, CacheState.ON, rate, "probes")
        return rate

    def _off_reason(self, model: str, m: _ModelState, rate: float | None) -> str | None:
        s = self._settings
        if rate is None:
            return None
        if len(m.window) >= s.window and rate < s.min_hit_rate:
            return "hit_rate"
        if len(m.window) >= min(s.window, s.cost_min_rows):
            benefit = self.benefit(model)
            if benefit is not None and benefit < s.cost_off_ratio:
                return "cost"
        return None

    def _should_turn_on(self, model: str, m: _ModelState, rate: float | None) -> bool:
        s = self._settings
        if not (
            len(m.probes) >= s.probe_window
            and rate is not None
            and rate >= s.reenable_hit_rate
            and self._clock() - m.off_since >= s.min_off_s
        ):
            return False
        benefit = self.benefit(model)
        return benefit is None or benefit >= s.cost_on_ratio

    def _switch(
        self, model: str, m: _ModelState, state: CacheState, rate: float | None, reason: str
    ) -> None:
        s = self._settings
        benefit = self.benefit(model)
        shown = "unknown" if benefit is None else f"{benefit:.2f}"
        if state is CacheState.OFF:
            logger.warning(
                "prediction cache OFF for model %s (%s): hit rate %.3f over %d lookups, "
                "saved/spent CPU %s",
                model,
                reason,
                rate,
                len(m.window),
                shown,
            )
            m.off_since = self._clock()
            m.probes = HitWindow(s.probe_window)
        else:
            logger.warning(
                "prediction cache ON for model %s: probed hit rate %.3f, saved/spent CPU %s",
                model,
                rate,
                shown,
            )
            m.window = HitWindow(s.window)
        m.state = state
        m.reason = reason
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
