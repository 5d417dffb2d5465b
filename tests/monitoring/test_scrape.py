"""Parsing /metrics and the increase of counters and histograms between scrapes."""

from __future__ import annotations

import math

import pytest
from prometheus_client import Counter

from monitoring.metrics import ServingMetrics
from monitoring.scrape import Histogram, Scrape, Window, fetch_metrics, parse_exposition
from tests.monitoring.samples import exposition, histogram, sample, scrape, stub_gateway


def test_parses_the_gateways_own_exposition() -> None:
    metrics = ServingMetrics()
    metrics.observe_request("fraud", "1", "predict", 0.003, 2)
    metrics.observe_request("fraud", "1", "predict", 0.020, 1)
    metrics.observe_batch(("fraud", "1"), 3, 0.001)
    Counter("servekit_cache_hits", "hits", ["model"], registry=metrics.registry).labels(
        "fraud"
    ).inc(5)
    s = Scrape.of(metrics.render().decode(), at=10.0)
    assert s.total("servekit_cache_hits_total", model="fraud") == 5.0
    assert s.total("servekit_predicted_rows_total", model="fraud") == 3.0
    assert s.total("servekit_cache_hits_total", model="other") is None
    h = s.histogram("servekit_request_latency_seconds", model="fraud", route="predict")
    assert h is not None and h.count == 2 and h.sum == pytest.approx(0.023)
    assert dict(h.buckets)[0.005] == 1 and dict(h.buckets)[math.inf] == 2
    assert s.by("servekit_batch_rows_count", "model") == {"fraud": 1.0}


def test_parse_keeps_labels_sorted_and_values_float() -> None:
    (only,) = parse_exposition('x_total{b="2",a="1"} 3\n')
    assert only.labels == (("a", "1"), ("b", "2")) and only.value == 3.0
    assert only.label("a") == "1" and only.label("missing") == ""


def test_quantile_interpolates_within_the_bucket_like_prometheus() -> None:
    h = Histogram(((0.01, 50.0), (0.1, 100.0), (math.inf, 100.0)), 100.0, 2.0)
    assert h.quantile(0.5) == pytest.approx(0.01)
    assert h.quantile(0.99) == pytest.approx(0.01 + 0.09 * 49 / 50)
    assert h.mean == pytest.approx(0.02)
    beyond = Histogram(((0.01, 1.0), (math.inf, 10.0)), 10.0, 5.0)
    assert beyond.quantile(0.99) == 0.01  # in +Inf: the largest finite bound
    assert math.isnan(Histogram((), 0.0, 0.0).quantile(0.5))


def test_window_deltas_rates_and_restarts() -> None:
    first = scrape(100.0, sample("c_total", 10, model="a"), sample("c_total", 5, model="b"))
    last = scrape(160.0, sample("c_total", 70, model="a"), sample("c_total", 2, model="b"))
    w = Window.over([last, first])
    assert w.seconds == 60.0
    assert w.delta("c_total", model="a") == 60.0
    assert w.delta("c_total", model="b") == 2.0  # went down: the gateway restarted
    assert w.rate("c_total", model="a") == pytest.approx(1.0)
    assert w.delta_by("c_total", "model") == {"a": 60.0, "b": 2.0}
    assert w.delta("missing_total") is None
    assert "60 s" in w.describe()


def test_one_scrape_gives_totals_and_no_rates() -> None:
    w = Window.over([scrape(100.0, sample("c_total", 10))])
    assert w.seconds is None and w.rate("c_total") is None
    assert w.delta("c_total") == 10.0
    assert "one scrape" in w.describe()
    with pytest.raises(ValueError):
        Window.over([])


def test_window_histogram_is_the_observations_in_between() -> None:
    first = scrape(0.0, histogram("lat", [0.001] * 10, model="a"))
    last = scrape(10.0, histogram("lat", [0.001] * 10 + [0.2] * 5, model="a"))
    h = Window.over([first, last]).histogram("lat", model="a")
    assert h is not None and h.count == 5 and h.quantile(0.5) > 0.1


def test_fetch_metrics_reads_a_live_endpoint() -> None:
    text = exposition([sample("servekit_shed_requests_total", 2)])
    with stub_gateway([text], []) as url:
        s = fetch_metrics(url, clock=lambda: 42.0)
    assert s.at == 42.0 and s.total("servekit_shed_requests_total") == 2.0
