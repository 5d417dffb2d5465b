"""The model process's GPUs, sampled through NVML: utilization, memory, power.

A daemon thread reads every GPU the process sees about once a second and keeps a moving
average of utilization (5 minutes by default: the autoscaling signal, smoothed so a burst
does not flap the replica count). ``GpuSampler`` is a Prometheus collector (scrape-time
gauges, nothing on the request path) and answers ``status()`` for a status route.

Where NVML or a GPU is missing the sampler exports no GPU series at all, logs why once
(INFO) and ``status()`` says why; servekit serves on CPU unchanged. ``pynvml`` (the
nvidia-ml-py package) is imported only when the sampler starts, so this module imports
without it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

LABELS = ["gpu", "uuid", "name"]


@dataclass(frozen=True)
class GpuDevice:
    """One GPU: NVML index, UUID and product name."""

    index: int
    uuid: str
    name: str


@dataclass(frozen=True)
class GpuReading:
    """One sample of one GPU; power is None where the board does not report it."""

    utilization_percent: float
    memory_used_bytes: float
    memory_total_bytes: float
    power_watts: float | None


class NvmlReader(Protocol):
    """What the sampler needs from NVML (tests pass a fake one in)."""

    def devices(self) -> list[GpuDevice]:
        """The GPUs, in NVML index order."""
        ...

    def read(self, index: int) -> GpuReading:
        """One sample of GPU ``index``."""
        ...

    def close(self) -> None:
        """Release NVML."""
        ...


class GpuUnavailable(Exception):
    """NVML or a GPU is missing; the message says which."""


class PynvmlReader:
    """The NVML reader over nvidia-ml-py's ``pynvml``. Open it with ``PynvmlReader.open()``."""

    def __init__(self, nvml: Any, devices: list[GpuDevice], handles: list[Any]) -> None:
        self._nvml = nvml
        self._devices = devices
        self._handles = handles

    @classmethod
    def open(cls) -> PynvmlReader:
        """Initialise NVML and list the GPUs; ``GpuUnavailable`` says why it cannot."""
        try:
            import pynvml
        except ImportError as exc:
            raise GpuUnavailable(f"nvidia-ml-py (pynvml) not installed: {exc}") from exc
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound as exc:
            raise GpuUnavailable(f"NVML not found: {exc} (no NVIDIA driver here)") from exc
        except pynvml.NVMLError as exc:
            raise GpuUnavailable(f"NVML failed to initialise: {exc}") from exc
        try:
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            devices = [
                GpuDevice(i, _text(pynvml.nvmlDeviceGetUUID(h)), _text(pynvml.nvmlDeviceGetName(h)))
                for i, h in enumerate(handles)
            ]
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise GpuUnavailable(f"NVML could not list the GPUs: {exc}") from exc
        if not devices:
            pynvml.nvmlShutdown()
            raise GpuUnavailable("NVML found no GPU")
        return cls(pynvml, devices, handles)

    def devices(self) -> list[GpuDevice]:
        return list(self._devices)

    def read(self, index: int) -> GpuReading:
        nvml, handle = self._nvml, self._handles[index]
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        try:
            power: float | None = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0  # mW
        except nvml.NVMLError_NotSupported:
            power = None
        return GpuReading(
            float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
            float(memory.used),
            float(memory.total),
            power,
        )

    def close(self) -> None:
        self._nvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class MovingAverage:
    """Mean of the samples of the last ``window_s`` seconds (samples come at a steady rate)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, value: float) -> None:
        """Record ``value`` taken at ``now``."""
        self._samples.append((now, value))
        self._drop_before(now - self.window_s)

    def value(self, now: float) -> float | None:
        """The mean over ``(now - window_s, now]``; None when the window holds no sample."""
        self._drop_before(now - self.window_s)
        if not self._samples:
            return None
        return sum(v for _, v in self._samples) / len(self._samples)

    def __len__(self) -> int:
        return len(self._samples)

    def _drop_before(self, cutoff: float) -> None:
        while self._samples and self._samples[0][0] <= cutoff:
            self._samples.popleft()


@dataclass
class _DeviceState:
    device: GpuDevice
    average: MovingAverage
    last: GpuReading | None = None
    errors: int = 0


class GpuSampler(Collector):
    """Samples the GPUs on a daemon thread and exports them at scrape time.

    Args:
        reader: the NVML reader; None opens the real one (``PynvmlReader.open``) on start.
        interval_s: seconds between samples.
        window_s: window of the utilization moving average.
        enabled: False turns the sampler off (no NVML call, no series; status says so).
        clock: monotonic seconds (tests pass a fake clock).
    """

    def __init__(
        self,
        reader: NvmlReader | None = None,
        *,
        interval_s: float = 1.0,
        window_s: float = 300.0,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.window_s = window_s
        self._reader = reader
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._states: list[_DeviceState] = []
        self.reason: str | None = "not started" if enabled else "turned off by settings"

    def open(self) -> bool:
        """Open the reader and list the GPUs; False (and ``reason`` set) where there are none.

        Tried once: a process without a GPU logs why a single time, however often asked.
        """
        if self.reason != "not started":
            return self.reason is None
        try:
            if self._reader is None:
                self._reader = PynvmlReader.open()
            devices = self._reader.devices()
            if not devices:
                raise GpuUnavailable("NVML found no GPU")
        except GpuUnavailable as exc:
            self.reason = str(exc)
            logger.info("GPU metrics off: %s", self.reason)
            return False
        self._states = [_DeviceState(d, MovingAverage(self.window_s)) for d in devices]
        self.reason = None
        names = ", ".join(f"{d.index}: {d.name}" for d in devices)
        logger.info("sampling %d GPU(s) every %.1f s (%s)", len(devices), self.interval_s, names)
        return True

    def start(self) -> bool:
        """Open NVML and start the sampling thread; False where no GPU can be sampled."""
        if self._thread is not None:
            return True
        if not self.open():
            return False
        self.sample_once()
        self._thread = threading.Thread(target=self._run, name="servekit-gpu", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """Stop the thread and release NVML."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval_s + 1)
            self._thread = None
        if self._reader is not None and self.reason is None:
            self._reader.close()
            self.reason = "stopped"

    def sample_once(self) -> None:
        """Read every GPU once (the thread's loop body; tests call it directly)."""
        reader = self._reader
        if reader is None or self.reason is not None:
            return
        now = self._clock()
        for state in self._states:
            try:
                reading = reader.read(state.device.index)
            except Exception as exc:  # a GPU that fails a read keeps its last sample
                state.errors += 1
                if state.errors == 1:
                    logger.warning("GPU %d read failed: %s", state.device.index, exc)
                continue
            with self._lock:
                state.last = reading
                state.average.add(now, reading.utilization_percent)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample_once()

    def snapshot(self) -> list[dict[str, Any]]:
        """Per GPU: identity, last sample and the utilization moving average."""
        now = self._clock()
        out = []
        with self._lock:
            for s in self._states:
                if s.last is None:
                    continue
                out.append(
                    {
                        "gpu": s.device.index,
                        "uuid": s.device.uuid,
                        "name": s.device.name,
                        "utilization_percent": s.last.utilization_percent,
                        "utilization_5m_percent": s.average.value(now),
                        "memory_used_bytes": s.last.memory_used_bytes,
                        "memory_total_bytes": s.last.memory_total_bytes,
                        "power_watts": s.last.power_watts,
                        "samples_in_window": len(s.average),
                        "read_errors": s.errors,
                    }
                )
        return out

    def status(self) -> dict[str, Any]:
        """For a status route: ``{"available": false, "reason"}`` or the GPUs' figures."""
        if self.reason is not None:
            return {"available": False, "reason": self.reason}
        return {
            "available": True,
            "interval_s": self.interval_s,
            "window_s": self.window_s,
            "devices": self.snapshot(),
        }

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.reason is not None:
            return
        rows = self.snapshot()
        if not rows:
            return
        yield from _families(rows, self.window_s)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


_SERIES = (
    ("servekit_gpu_utilization_percent", "utilization_percent", "GPU busy time, last sample (%)."),
    (
        "servekit_gpu_utilization_5m_percent",
        "utilization_5m_percent",
        "GPU busy time, moving average over the window (%); the autoscaling signal.",
    ),
    ("servekit_gpu_memory_used_bytes", "memory_used_bytes", "GPU memory in use."),
    ("servekit_gpu_memory_total_bytes", "memory_total_bytes", "GPU memory in all."),
    ("servekit_gpu_power_watts", "power_watts", "GPU board power draw."),
)


def _families(rows: list[dict[str, Any]], window_s: float) -> Iterator[GaugeMetricFamily]:
    for name, key, doc in _SERIES:
        if key == "utilization_5m_percent":
            doc = doc.replace("the window", f"{window_s:g} s")
        family = GaugeMetricFamily(name, doc, labels=LABELS)
        for row in rows:
            if row[key] is not None:
                family.add_metric([str(row["gpu"]), row["uuid"], row["name"]], row[key])
        if family.samples:  # e.g. a board that reports no power: no empty family
            yield family
