"""Live traffic of a window, read back from the prediction stream.

The gateway logs served requests to ``servekit:predictions:{model}``
(``services.rollout.prediction_log``): every request during a rollout, a sample of them
otherwise (``SERVEKIT_ROLLOUT_PREDICTION_LOG_SAMPLE``). Each entry holds the request's
feature rows (tabular models: the assembled float32 vector, feature-store values
included) and its predictions, so the rows a version saw in a window can be rebuilt
without touching the serving path. Failed requests carry no rows and are only counted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitoring.reference import prediction_row
from services.registry.schema import ModelSchema
from services.rollout.prediction_log import PredictionEvent, PredictionLog

logger = logging.getLogger(__name__)

_PAGE = 1000


@dataclass
class VersionTraffic:
    """The logged rows of one version in a window, oldest first.

    Attributes:
        version: the version that answered.
        inputs: per row, its logged features (None when the request logged none, as for
            text models, whose inputs are token tensors).
        predictions: per row, the prediction as ``/predict`` answered it.
        requests: logged requests that answered.
        errors: logged requests that failed (no rows).
        notes: what limits the window (a trimmed stream, rows left out).
    """

    version: str
    inputs: list[list[float] | None] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Rows answered in the window."""
        return len(self.predictions)

    def add(self, event: PredictionEvent) -> None:
        """Count one logged request and keep its rows."""
        if event.error or not isinstance(event.output, list):
            self.errors += int(event.error)
            return
        self.requests += 1
        inputs = event.inputs if isinstance(event.inputs, list) else None
        if inputs is not None and len(inputs) != len(event.output):
            inputs = None  # rows and answers do not pair up: keep the answers only
        for i, prediction in enumerate(event.output):
            self.inputs.append(inputs[i] if inputs is not None else None)
            self.predictions.append(prediction)

    def newest(self, max_rows: int) -> None:
        """Keep only the newest ``max_rows`` rows."""
        if self.rows > max_rows:
            self.notes.append(f"only the newest {max_rows} of {self.rows} rows were read")
            del self.inputs[:-max_rows]
            del self.predictions[:-max_rows]

    def features(self) -> np.ndarray | None:
        """The logged features as float32 ``[rows, k]``; None unless every row has them
        with one width."""
        if not self.inputs or any(row is None for row in self.inputs):
            return None
        widths = {len(row) for row in self.inputs if row is not None}
        if len(widths) != 1:
            return None
        return np.asarray(self.inputs, dtype=np.float32)

    def outputs(self, schema: ModelSchema) -> np.ndarray:
        """The predictions in the outputs layout of ``monitoring.reference``."""
        rows = [prediction_row(schema, p) for p in self.predictions]
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.asarray(rows, dtype=np.float32)


@dataclass
class WindowTraffic:
    """What a model served in ``[start, end]`` (seconds since the epoch), by version."""

    model: str
    start: float
    end: float
    versions: dict[str, VersionTraffic] = field(default_factory=dict)

    def served(self) -> list[str]:
        """Versions with answered rows in the window, most rows first."""
        live = [v for v in self.versions.values() if v.rows]
        return [v.version for v in sorted(live, key=lambda v: (-v.rows, v.version))]


def window_bounds(window_s: float, end: float | None = None) -> tuple[float, float]:
    """``(start, end)`` of the window of ``window_s`` seconds ending at ``end`` (now)."""
    stop = time.time() if end is None else end
    return stop - window_s, stop


async def read_window(
    log: PredictionLog,
    model: str,
    start: float,
    end: float,
    *,
    max_rows: int,
    stream_maxlen: int | None = None,
) -> WindowTraffic:
    """Read ``model``'s logged requests in ``[start, end]``, keeping each version's newest
    ``max_rows`` rows.

    Entries are found by stream id (the time they were written, a few milliseconds after
    the request) and kept by the request's own time stamp. Given the stream's cap
    (``SERVEKIT_REDIS_STREAM_MAXLEN``), a window that reaches past the oldest entry of a
    full stream is noted: the report then covers less time than asked.
    """
    traffic = WindowTraffic(model, start, end)
    since = f"{max(int(start * 1000) - 1, 0)}-{2**64 - 1}"
    entries, oldest = 0, None
    while True:
        page = await log.read(model, since_id=since, count=_PAGE)
        entries += len(page)
        if page and oldest is None:
            oldest = page[0][1].ts
        for entry_id, event in page:
            since = entry_id
            if start <= event.ts <= end:
                version = traffic.versions.setdefault(event.version, VersionTraffic(event.version))
                version.add(event)
        if len(page) < _PAGE or (page and page[-1][1].ts > end):
            break
    trimmed = stream_maxlen is not None and entries >= stream_maxlen and oldest is not None
    for version in traffic.versions.values():
        version.newest(max_rows)
        if trimmed:
            since_text = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(oldest))
            version.notes.append(
                f"the prediction stream is full (SERVEKIT_REDIS_STREAM_MAXLEN={stream_maxlen}): "
                f"the window starts at its oldest entry, {since_text}"
            )
    logger.info(
        "%s: %s in the window",
        model,
        ", ".join(f"v{v.version} {v.rows} rows" for v in traffic.versions.values()) or "nothing",
    )
    return traffic
