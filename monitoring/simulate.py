"""Replay a day of traffic through the autoscaling policies and estimate what users see.

A trace gives the request rate every ``step_s`` seconds (15 s: the HPA's sync period) for
24 hours: ``diurnal`` (smooth, 10x peak to trough, a few % noise) or ``spike`` (the same
plus a sudden 5x spike for 30 minutes). Each policy (``monitoring.autoscale``) runs against
its own fleet of replicas:

- cache hits (``cache_hit_rate``) are answered by the gateway and never reach a GPU; the
  rest, the inference rate, is shared evenly by the ready replicas;
- a new replica serves nothing for ``cold_start_s`` (pod start, model load); removed
  replicas go at once, starting ones first (as a ReplicaSet does);
- each ready replica is an M/M/1 queue with service rate mu: the p99 of the time in
  system is ``ln(100 (1 - h)) / (mu - lambda)`` (hits are fast, so only the slowest
  1 % / (1 - h) of misses count), plus ``base_latency_ms``; past capacity a backlog builds
  (fluid model) that every request also waits for, up to ``queue_limit`` rows per replica
  (servekit's batch queue limit), beyond which requests are refused (503, counted as shed);
- mu is ``replica_capacity`` over the work per request, which swings by ``cost_swing``
  over the day (heavier inputs in the evening): GPU utilization sees that, a policy that
  divides the request rate by a fixed capacity does not;
- GPU utilization is the busy share of a replica, from load: ``lambda / mu``, 100 % while
  a backlog exists, 0 % on a starting replica; so it saturates at 100 % however large the
  overload, which is exactly what a GPU-only policy cannot see past;
- the policy sees what the manifests query: the 5-minute mean of GPU utilization, the
  request rate and cache hit rate over 2 minutes, and requests in flight over 2 minutes
  (Little's law: arrival rate x time in system, backlog included).

A minute is breached when the estimated p99 exceeds ``slo_p99_ms``. Replica-hours count
starting replicas too (they are paid for).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from monitoring.autoscale import Autoscaler, Decision, Mode, Observation, PolicySpec

Trace = Literal["diurnal", "spike"]
TRACES: tuple[Trace, ...] = ("diurnal", "spike")
POLICIES: dict[str, Mode] = {
    "gpu-only": "gpu",
    "request-rate-only": "requests",
    "combined": "combined",
}


@dataclass(frozen=True)
class SimOptions:
    """A simulation's trace and world (the defaults are assumptions: set your own).

    Args:
        trace: ``diurnal`` or ``spike``; ``seed`` seeds its noise (``noise``: 3 % per step).
        hours, step_s: 24 h in 15 s steps (the HPA's sync period).
        peak_rps, peak_to_trough, trough_hour: 6,000 requests/s at 16:00, 600 at 04:00.
        spike_factor, spike_start_hour, spike_minutes: 5x from 11:00 for 30 minutes.
        cache_hit_rate: 30 % of requests answered from the prediction cache.
        replica_capacity: 500 rows/s one replica infers at saturation (a GPU replica of a
            mid-sized model; measure yours and pass it, the policy uses the same figure).
        cost_swing: 10 % swing over the day in the work per request (inputs get longer
            in the evening); 0 makes the request rate an exact measure of load.
        queue_limit: rows queued per replica before 503 (servekit's batch queue limit).
        cold_start_s: 120 s from a scale-up to a replica that serves (pod start, model
            load onto the GPU).
        slo_p99_ms, base_latency_ms: 100 ms p99 target; 2 ms outside the queue.
        gpu_window_s, rate_window_s: what the policy's metrics average over (the 5-minute
            GPU mean; 2-minute request and in-flight rates), as the manifests' queries do.
    """

    trace: Trace = "diurnal"
    seed: int = 0
    hours: float = 24.0
    step_s: float = 15.0
    peak_rps: float = 6000.0
    peak_to_trough: float = 10.0
    trough_hour: float = 4.0
    noise: float = 0.03
    spike_factor: float = 5.0
    spike_start_hour: float = 11.0
    spike_minutes: float = 30.0
    cache_hit_rate: float = 0.3
    replica_capacity: float = 500.0
    cost_swing: float = 0.1
    queue_limit: int = 4096
    cold_start_s: float = 120.0
    slo_p99_ms: float = 100.0
    base_latency_ms: float = 2.0
    gpu_window_s: float = 300.0
    rate_window_s: float = 120.0

    def __post_init__(self) -> None:
        if self.trace not in TRACES:
            raise ValueError(f"trace must be one of {TRACES}, not {self.trace!r}")
        if self.step_s <= 0 or self.hours * 3600 < 60:
            raise ValueError("need step_s > 0 and at least a minute of trace")

    @property
    def steps(self) -> int:
        """Number of simulation steps."""
        return int(round(self.hours * 3600 / self.step_s))


def request_trace(opts: SimOptions) -> np.ndarray:
    """Requests per second at each step: a cosine day, seeded noise, and the spike."""
    hours = _hours(opts)
    trough = opts.peak_rps / opts.peak_to_trough
    shape = (1 - np.cos(2 * np.pi * (hours - opts.trough_hour) / 24.0)) / 2
    rate = trough + (opts.peak_rps - trough) * shape
    rng = np.random.default_rng(opts.seed)
    rate = rate * np.clip(1 + opts.noise * rng.standard_normal(opts.steps), 0.5, 1.5)
    if opts.trace == "spike":
        start = opts.spike_start_hour
        inside = (hours >= start) & (hours < start + opts.spike_minutes / 60.0)
        rate = np.where(inside, rate * opts.spike_factor, rate)
    return rate


def capacity_trace(opts: SimOptions) -> np.ndarray:
    """Rows per second one replica serves at each step: the nominal capacity over the
    day's work per request, which swings by ``cost_swing`` (heaviest at 20:00)."""
    cost = 1 + opts.cost_swing * np.sin(2 * np.pi * (_hours(opts) - 14.0) / 24.0)
    return opts.replica_capacity / cost


def _hours(opts: SimOptions) -> np.ndarray:
    return np.arange(opts.steps) * opts.step_s / 3600.0


@dataclass(frozen=True)
class Queueing:
    """One step's queueing estimate for the ready replicas."""

    utilization: float  # busy share of a ready replica, 0..1
    p99_ms: float
    in_flight: float  # requests in system, all replicas
    backlog: float  # requests queued past capacity after the step
    shed: float  # requests refused in the step (queue full: 503)


def queueing(opts: SimOptions, rate: float, mu: float, ready: int, backlog: float) -> Queueing:
    """M/M/1 per ready replica, plus a fluid backlog (bounded by the queue) past capacity."""
    inference = rate * (1 - opts.cache_hit_rate)
    capacity = ready * mu
    backlog = max(0.0, backlog + (inference - capacity) * opts.step_s)
    shed = max(0.0, backlog - ready * opts.queue_limit)
    backlog -= shed
    if capacity <= 0:
        return Queueing(0.0, math.inf, backlog, backlog, shed)
    rho = inference / capacity
    busy = 1.0 if backlog > 0 else min(rho, 1.0)
    # At or past capacity the stationary formula has no answer: the backlog term carries it.
    rho_q = min(rho, 0.99)
    tail_s = math.log(max(100 * (1 - opts.cache_hit_rate), 1.0)) / (mu * (1 - rho_q))
    p99 = opts.base_latency_ms + 1000 * (tail_s + backlog / capacity)
    in_flight = ready * rho_q / (1 - rho_q) + backlog
    return Queueing(busy, p99, in_flight, backlog, shed)


class _Window:
    """Mean of the values of the last ``window_s`` seconds (the PromQL range functions)."""

    def __init__(self, window_s: float, step_s: float) -> None:
        self._values: deque[float] = deque(maxlen=max(1, int(round(window_s / step_s))))

    def add(self, value: float) -> float:
        self._values.append(value)
        return sum(self._values) / len(self._values)


@dataclass
class Fleet:
    """The replicas of one policy: the time each one is (or was) ready."""

    ready_at: list[float] = field(default_factory=list)

    def ready(self, now: float) -> int:
        """Replicas serving at ``now``."""
        return sum(t <= now for t in self.ready_at)

    def resize(self, desired: int, now: float, cold_start_s: float) -> None:
        """Add cold replicas or remove replicas, starting ones first."""
        while len(self.ready_at) < desired:
            self.ready_at.append(now + cold_start_s)
        self.ready_at.sort()
        del self.ready_at[desired:]


@dataclass
class PolicyRun:
    """One policy's run: per-step series and its scale decisions."""

    name: str
    spec: PolicySpec
    replicas: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    utilization: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    shed: list[float] = field(default_factory=list)
    signals: dict[str, int] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


def initial_replicas(opts: SimOptions, spec: PolicySpec, rate: float) -> int:
    """A fleet sized for the first step's load at the target (the day starts warm)."""
    need = rate * (1 - opts.cache_hit_rate) / (opts.replica_capacity * spec.target_percent / 100)
    return min(max(math.ceil(need), spec.min_replicas), spec.max_replicas)


class _Signals:
    """What the policy sees: the range-function means the manifests' queries compute."""

    def __init__(self, opts: SimOptions) -> None:
        self.opts = opts
        self.gpu = _Window(opts.gpu_window_s, opts.step_s)
        self.rate = _Window(opts.rate_window_s, opts.step_s)
        self.in_flight = _Window(opts.rate_window_s, opts.step_s)

    def observe(
        self, now: float, replicas: int, gpu: float, q: Queueing, rate: float
    ) -> Observation:
        return Observation(
            time_s=now,
            replicas=replicas,
            gpu_utilization=self.gpu.add(gpu),
            in_flight=self.in_flight.add(q.in_flight),
            request_rate=self.rate.add(rate),
            cache_hit_rate=self.opts.cache_hit_rate,
        )


def run_policy(
    name: str,
    spec: PolicySpec,
    opts: SimOptions,
    world: tuple[np.ndarray, np.ndarray],
    on_step: Callable[[], None] | None = None,
) -> PolicyRun:
    """Replay ``world`` (request rate and replica capacity per step) through one policy.

    ``on_step`` is called after every step (a progress bar).
    """
    rates, capacities = world
    run = PolicyRun(name, spec)
    scaler = Autoscaler(spec)
    fleet = Fleet([0.0] * initial_replicas(opts, spec, float(rates[0])))
    signals = _Signals(opts)
    backlog = 0.0
    for k, (rate, mu) in enumerate(zip(rates.tolist(), capacities.tolist(), strict=True)):
        now = k * opts.step_s
        total, ready = len(fleet.ready_at), fleet.ready(now)
        q = queueing(opts, rate, mu, ready, backlog)
        backlog = q.backlog
        # A starting replica's GPU idles: DCGM's mean over the fleet counts it as 0 %.
        gpu = q.utilization * ready / total * 100 if total else 0.0
        run.replicas.append(total)
        run.ready.append(ready)
        run.utilization.append(gpu)
        run.p99_ms.append(q.p99_ms)
        run.shed.append(q.shed)
        decision = scaler.decide(signals.observe(now, total, gpu, q, rate))
        _note(run, decision)
        fleet.resize(decision.desired, now, opts.cold_start_s)
        if on_step is not None:
            on_step()
    return run


def _note(run: PolicyRun, decision: Decision) -> None:
    run.signals[decision.signal] = run.signals.get(decision.signal, 0) + 1
    if decision.desired != decision.current:
        event = decision.as_dict()
        event["inputs"] = {k: _round(v) for k, v in event["inputs"].items()}
        run.events.append(event)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def summarize(run: PolicyRun, opts: SimOptions) -> dict[str, Any]:
    """SLO minutes breached, replica-hours and the other headline figures of one run."""
    p99 = np.asarray(run.p99_ms)
    finite = p99[np.isfinite(p99)]
    return {
        "slo_minutes_breached": sum(breached_minutes(run.p99_ms, opts)),
        "replica_hours": round(float(np.sum(run.replicas)) * opts.step_s / 3600.0, 2),
        "peak_replicas": int(max(run.replicas)),
        "min_replicas": int(min(run.replicas)),
        "mean_gpu_utilization_percent": round(float(np.mean(run.utilization)), 1),
        "worst_p99_ms": round(float(finite.max()), 1) if finite.size else None,
        "shed_requests": int(round(sum(run.shed))),
        "scale_events": len(run.events),
        "decisions_by_signal": dict(sorted(run.signals.items())),
    }


def breached_minutes(p99_ms: list[float], opts: SimOptions) -> list[bool]:
    """Per minute: did the p99 estimate of any step in it exceed the SLO?"""
    return [v is None or v > opts.slo_p99_ms for v in per_minute(p99_ms, opts, "max")]


def per_minute(values: list[float], opts: SimOptions, how: str) -> list[float | None]:
    """Steps folded into minutes (``max`` or ``mean``); None where a value is infinite."""
    per = max(1, int(round(60.0 / opts.step_s)))
    arr = np.asarray(values, dtype=float)
    folded = arr[: len(arr) // per * per].reshape(-1, per)
    out = folded.max(axis=1) if how == "max" else folded.mean(axis=1)
    return [round(float(v), 3) if math.isfinite(v) else None for v in out]


def simulate(
    opts: SimOptions,
    base: PolicySpec,
    on_step: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run the three policies on one trace; the JSON-ready result."""
    rates = request_trace(opts)
    world = (rates, capacity_trace(opts))
    result: dict[str, Any] = {
        "trace": opts.trace,
        "options": asdict(opts),
        "policy": {k: v for k, v in asdict(base).items() if k != "mode"},
        "minutes": {
            "request_rate": per_minute(list(rates), opts, "mean"),
            "inference_rate": per_minute(list(rates * (1 - opts.cache_hit_rate)), opts, "mean"),
            "replica_capacity": per_minute(list(world[1]), opts, "mean"),
        },
        "policies": {},
    }
    for name, mode in POLICIES.items():
        run = run_policy(name, replace(base, mode=mode), opts, world, on_step)
        result["policies"][name] = {
            "mode": mode,
            "summary": summarize(run, opts),
            "minutes": {
                "replicas": per_minute([float(r) for r in run.replicas], opts, "max"),
                "ready": per_minute([float(r) for r in run.ready], opts, "mean"),
                "gpu_utilization_percent": per_minute(run.utilization, opts, "mean"),
                "p99_ms": per_minute(run.p99_ms, opts, "max"),
                "breached": breached_minutes(run.p99_ms, opts),
            },
            "scale_events": run.events,
        }
    return result
