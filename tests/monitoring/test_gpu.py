"""The GPU sampler: moving average, collector and status with a fake NVML reader; the
no-GPU path against the host's real NVML (or its absence); real GPUs where there are some."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.gpu import (
    GpuDevice,
    GpuReading,
    GpuSampler,
    GpuUnavailable,
    MovingAverage,
    PynvmlReader,
)

GIB = 1024**3


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeReader:
    """Two GPUs; utilization set per device by the test; GPU 1 reports no power."""

    def __init__(self) -> None:
        self.util = {0: 0.0, 1: 0.0}
        self.fail: set[int] = set()
        self.closed = False

    def devices(self) -> list[GpuDevice]:
        return [GpuDevice(0, "GPU-aaaa", "NVIDIA H100"), GpuDevice(1, "GPU-bbbb", "NVIDIA H100")]

    def read(self, index: int) -> GpuReading:
        if index in self.fail:
            raise RuntimeError("GPU is lost")
        power = 312.5 if index == 0 else None
        return GpuReading(self.util[index], 10 * GIB, 80 * GIB, power)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reader() -> FakeReader:
    return FakeReader()


@pytest.fixture
def sampler(reader: FakeReader, clock: FakeClock) -> Iterator[GpuSampler]:
    s = GpuSampler(reader, window_s=300.0, clock=clock)
    assert s.open()
    yield s
    s.stop()


def tick(sampler: GpuSampler, clock: FakeClock, seconds: int) -> None:
    for _ in range(seconds):
        clock.now += 1.0
        sampler.sample_once()


def scrape(sampler: GpuSampler) -> dict[str, dict[tuple[str, ...], float]]:
    registry = CollectorRegistry()
    registry.register(sampler)
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            key = (sample.labels["gpu"], sample.labels["uuid"], sample.labels["name"])
            out.setdefault(sample.name, {})[key] = sample.value
    return out


def test_moving_average_keeps_the_last_window() -> None:
    avg = MovingAverage(10.0)
    assert avg.value(0.0) is None
    for t in range(1, 11):
        avg.add(float(t), 50.0)
    for t in range(11, 16):
        avg.add(float(t), 100.0)
    assert avg.value(15.0) == pytest.approx(75.0)  # t = 6..15: five at 50, five at 100
    assert avg.value(30.0) is None  # nothing sampled for a whole window


def test_five_minute_average_follows_a_step(
    sampler: GpuSampler, reader: FakeReader, clock: FakeClock
) -> None:
    reader.util = {0: 40.0, 1: 0.0}
    tick(sampler, clock, 300)
    reader.util = {0: 100.0, 1: 0.0}
    tick(sampler, clock, 150)
    gpu0 = sampler.snapshot()[0]
    assert gpu0["utilization_percent"] == 100.0
    assert gpu0["utilization_5m_percent"] == pytest.approx(70.0)  # half the window each
    assert gpu0["samples_in_window"] == 300
    tick(sampler, clock, 150)
    assert sampler.snapshot()[0]["utilization_5m_percent"] == pytest.approx(100.0)


def test_collector_exports_each_gpu_with_its_labels(
    sampler: GpuSampler, reader: FakeReader, clock: FakeClock
) -> None:
    reader.util = {0: 90.0, 1: 30.0}
    tick(sampler, clock, 5)
    series = scrape(sampler)
    gpu0, gpu1 = ("0", "GPU-aaaa", "NVIDIA H100"), ("1", "GPU-bbbb", "NVIDIA H100")
    assert series["servekit_gpu_utilization_percent"] == {gpu0: 90.0, gpu1: 30.0}
    assert series["servekit_gpu_utilization_5m_percent"] == {gpu0: 90.0, gpu1: 30.0}
    assert series["servekit_gpu_memory_used_bytes"][gpu0] == 10 * GIB
    assert series["servekit_gpu_memory_total_bytes"][gpu1] == 80 * GIB
    assert series["servekit_gpu_power_watts"] == {gpu0: 312.5}  # GPU 1 reports no power


def test_status_lists_the_devices(sampler: GpuSampler, clock: FakeClock) -> None:
    tick(sampler, clock, 2)
    status = sampler.status()
    assert status["available"] is True
    assert status["window_s"] == 300.0
    assert [d["uuid"] for d in status["devices"]] == ["GPU-aaaa", "GPU-bbbb"]


def test_a_failing_gpu_keeps_its_last_sample_and_warns_once(
    sampler: GpuSampler,
    reader: FakeReader,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reader.util = {0: 50.0, 1: 60.0}
    tick(sampler, clock, 3)
    reader.fail = {1}
    with caplog.at_level(logging.WARNING, logger="monitoring.gpu"):
        tick(sampler, clock, 5)
    assert len([r for r in caplog.records if "read failed" in r.message]) == 1
    gpu1 = sampler.snapshot()[1]
    assert (gpu1["utilization_percent"], gpu1["read_errors"]) == (60.0, 5)


def test_the_thread_samples_until_stopped(reader: FakeReader) -> None:
    reader.util = {0: 20.0, 1: 20.0}
    s = GpuSampler(reader, interval_s=0.01)
    assert s.start()
    deadline = time.monotonic() + 5
    while s.snapshot()[0]["samples_in_window"] < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    s.stop()
    assert s.snapshot()[0]["samples_in_window"] >= 5
    assert reader.closed
    assert s.status() == {"available": False, "reason": "stopped"}


class NoGpuReader(FakeReader):
    def devices(self) -> list[GpuDevice]:
        return []


def test_a_reader_without_gpus_means_no_series() -> None:
    s = GpuSampler(NoGpuReader())
    assert not s.start()
    assert s.status() == {"available": False, "reason": "NVML found no GPU"}
    assert scrape(s) == {}


def test_a_sampler_turned_off_never_opens_nvml(reader: FakeReader) -> None:
    s = GpuSampler(reader, enabled=False)
    assert not s.start()
    assert s.status() == {"available": False, "reason": "turned off by settings"}
    assert scrape(s) == {}


def _real_nvml_works() -> bool:
    try:
        PynvmlReader.open().close()
    except GpuUnavailable:
        return False
    return True


@pytest.mark.skipif(_real_nvml_works(), reason="a GPU is present: the no-GPU path cannot run")
def test_without_nvml_or_gpu_there_are_no_series_and_one_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = GpuSampler()
    with caplog.at_level(logging.INFO, logger="monitoring.gpu"):
        assert not s.start()
        assert not s.start()  # neither a second start nor a scrape logs again
        scrape(s)
    lines = [r for r in caplog.records if r.name == "monitoring.gpu"]
    assert [r.levelno for r in lines] == [logging.INFO]
    assert "GPU metrics off" in lines[0].getMessage()
    status = s.status()
    assert status["available"] is False
    assert status["reason"].startswith(("NVML not found", "NVML failed", "NVML found no GPU"))
    assert scrape(s) == {}
    s.stop()  # harmless without a reader


def test_the_module_imports_and_reports_without_pynvml() -> None:
    code = (
        "import sys; sys.modules['pynvml'] = None\n"
        "from monitoring.gpu import GpuSampler\n"
        "s = GpuSampler(); print(s.start(), s.status()['reason'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.startswith("False nvidia-ml-py (pynvml) not installed")


@pytest.mark.gpu
@pytest.mark.skipif(not _real_nvml_works(), reason="no NVIDIA GPU or driver here")
def test_real_gpus_are_sampled() -> None:
    s = GpuSampler(interval_s=0.1)
    assert s.start()
    time.sleep(0.5)
    status = s.status()
    s.stop()
    assert status["available"] is True
    for d in status["devices"]:
        assert 0 <= d["utilization_percent"] <= 100
        assert 0 < d["memory_used_bytes"] <= d["memory_total_bytes"]
        assert d["uuid"].startswith(("GPU-", "MIG-"))


def test_the_sampler_joins_the_gateways_metrics(reader: FakeReader) -> None:
    """As the service wires it: one more collector on the serving metrics' registry."""
    from monitoring.metrics import ServingMetrics

    metrics = ServingMetrics()
    s = GpuSampler(reader)
    metrics.add_collector(s)
    assert b"servekit_gpu" not in metrics.render()  # not started: nothing yet
    assert s.start()
    s.stop()
    assert b"servekit_gpu" not in metrics.render()  # stopped: no stale series
    s = GpuSampler(FakeReader())
    metrics.add_collector(s)
    s.open()
    s.sample_once()
    text = metrics.render().decode()
    assert 'servekit_gpu_utilization_5m_percent{gpu="0",name="NVIDIA H100",uuid="GPU-aaaa"}' in text
