"""Reading a gateway's ``/metrics``: the text exposition parsed into samples, and the
increase of counters and histograms between two scrapes.

Rates need two scrapes: a counter's value says nothing about the present until it is
compared with an earlier one. A :class:`Window` over a single scrape compares it with an
empty one, so it sees every counter's total since the gateway started (still good for
shares, hit rates and percentiles) but has no duration, and its rates are None.
"""

from __future__ import annotations

import math
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample line: its full name (``..._total``, ``..._bucket``), labels and value."""

    name: str
    labels: Labels
    value: float

    def label(self, key: str) -> str:
        """The value of label ``key`` ("" when the sample has none)."""
        return dict(self.labels).get(key, "")

    def matches(self, match: Mapping[str, str]) -> bool:
        """Whether every label of ``match`` has the given value."""
        own = dict(self.labels)
        return all(own.get(k) == v for k, v in match.items())


def parse_exposition(text: str) -> list[Sample]:
    """The samples of a Prometheus text exposition (prometheus_client's own parser)."""
    return [
        Sample(s.name, tuple(sorted(s.labels.items())), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


@dataclass(frozen=True, slots=True)
class Histogram:
    """A histogram's cumulative buckets (``le`` ascending, ``+Inf`` last), count and sum."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    sum: float

    @property
    def mean(self) -> float:
        """Mean observation (NaN without observations)."""
        return self.sum / self.count if self.count > 0 else math.nan

    def minus(self, earlier: Histogram | None) -> Histogram:
        """The observations since ``earlier`` (all of them if the gateway restarted)."""
        if earlier is None or self.count < earlier.count:
            return self
        before = dict(earlier.buckets)
        buckets = tuple((le, n - before.get(le, 0.0)) for le, n in self.buckets)
        return Histogram(buckets, self.count - earlier.count, self.sum - earlier.sum)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile, interpolated within its bucket as Prometheus'
        ``histogram_quantile`` does (NaN without observations; the largest finite bound
        when it falls in the ``+Inf`` bucket)."""
        if self.count <= 0 or not self.buckets:
            return math.nan
        rank = q * self.count
        lower, below = 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(le):
                    return lower
                if cumulative == below:
                    return le
                return lower + (le - lower) * (rank - below) / (cumulative - below)
            lower, below = le, cumulative
        return lower


@dataclass(frozen=True, slots=True)
class Scrape:
    """The samples of one scrape and when it was taken (epoch seconds; NaN: no time)."""

    at: float
    samples: tuple[Sample, ...] = field(default=())

    @classmethod
    def of(cls, text: str, at: float) -> Scrape:
        """A scrape from exposition text."""
        return cls(at, tuple(parse_exposition(text)))

    def select(self, name: str, match: Mapping[str, str]) -> list[Sample]:
        """Samples called ``name`` whose labels match."""
        return [s for s in self.samples if s.name == name and s.matches(match)]

    def has(self, name: str) -> bool:
        """Whether any sample is called ``name``."""
        return any(s.name == name for s in self.samples)

    def total(self, name: str, **match: str) -> float | None:
        """Sum of the matching samples; None when there is none."""
        found = self.select(name, match)
        return sum(s.value for s in found) if found else None

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        """Sum of the matching samples per value of ``label``."""
        out: dict[str, float] = defaultdict(float)
        for s in self.select(name, match):
            out[s.label(label)] += s.value
        return dict(out)

    def histogram(self, name: str, **match: str) -> Histogram | None:
        """The histogram ``name`` summed over the matching series; None when absent."""
        per_le: dict[float, float] = defaultdict(float)
        for s in self.select(f"{name}_bucket", match):
            per_le[float(s.label("le"))] += s.value
        if not per_le:
            return None
        return Histogram(
            tuple(sorted(per_le.items())),
            self.total(f"{name}_count", **match) or 0.0,
            self.total(f"{name}_sum", **match) or 0.0,
        )


@dataclass(frozen=True, slots=True)
class Window:
    """What changed between two scrapes."""

    first: Scrape
    last: Scrape

    @classmethod
    def over(cls, scrapes: Iterable[Scrape]) -> Window:
        """The first and last of ``scrapes``; one scrape is compared with an empty one."""
        ordered = sorted(scrapes, key=lambda s: s.at)
        if not ordered:
            raise ValueError("a window needs at least one scrape")
        if len(ordered) == 1:
            return cls(Scrape(math.nan), ordered[0])
        return cls(ordered[0], ordered[-1])

    @property
    def seconds(self) -> float | None:
        """The window's length; None over a single scrape."""
        span = self.last.at - self.first.at
        return span if span > 0 else None

    def delta(self, name: str, **match: str) -> float | None:
        """A counter's increase (its whole value after a restart); None when absent."""
        now = self.last.total(name, **match)
        if now is None:
            return None
        before = self.first.total(name, **match) or 0.0
        return now - before if now >= before else now

    def delta_by(self, name: str, label: str, **match: str) -> dict[str, float]:
        """A counter's increase per value of ``label``."""
        before = self.first.by(name, label, **match)
        out = {}
        for key, now in self.last.by(name, label, **match).items():
            prev = before.get(key, 0.0)
            out[key] = now - prev if now >= prev else now
        return out

    def rate(self, name: str, **match: str) -> float | None:
        """A counter's increase per second; None when absent or over a single scrape."""
        increase, seconds = self.delta(name, **match), self.seconds
        if increase is None or seconds is None:
            return None
        return increase / seconds

    def histogram(self, name: str, **match: str) -> Histogram | None:
        """The observations of histogram ``name`` within the window."""
        now = self.last.histogram(name, **match)
        if now is None:
            return None
        return now.minus(self.first.histogram(name, **match))

    def describe(self) -> str:
        """How the window's numbers were measured, for a report."""
        if self.seconds is None:
            return "since the gateway started (one scrape)"
        return f"over {self.seconds:.0f} s (first to last scrape)"


def fetch_metrics(
    base_url: str, timeout_s: float = 5.0, clock: Callable[[], float] = time.time
) -> Scrape:
    """Scrape ``{base_url}/metrics`` once."""
    url = base_url.rstrip("/") + "/metrics"
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - http(s) URL
        text = response.read().decode()
    return Scrape.of(text, clock())
