"""Drift reports: a window of live traffic of one model version against its reference.

``build_report`` compares the rows a version served in a window (``monitoring.traffic``)
with the reference sample stored at its registration (``monitoring.reference``) in an
Evidently report: data drift per input feature, prediction drift, and a summary of the
data. It returns a :class:`DriftReport`: the self-contained HTML and a
:class:`DriftResult`, whose JSON holds the verdict per column.

How drift is judged is Evidently's default, chosen per column by its type and the
reference's size: over 1,000 reference rows, the normed Wasserstein distance (numerical)
and the Jensen-Shannon distance (categorical), drifted at 0.1 or more; with fewer rows,
p-values (K-S, chi-square, Z) under 0.05. A version has drift when at least
``SERVEKIT_MONITORING_DRIFT_SHARE`` of its input-feature columns drifted (when no
feature is logged, as for a text model's tokens, its prediction columns are judged).

A version registered without a reference, or a window without enough traffic, gives a
result that says so (``status``), never an exception. Evidently and pandas are imported
inside the functions: the gateway never loads them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson

from monitoring.drift_frames import DriftFrames, build_frames, current_frame
from monitoring.reference import ReferenceSample

if TYPE_CHECKING:
    from monitoring.traffic import VersionTraffic
    from services.registry.versions import ModelRegistry, ModelVersion
    from services.settings import MonitoringSettings

logger = logging.getLogger(__name__)

Status = Literal["ok", "no_reference", "no_traffic", "too_little_traffic"]


@dataclass(frozen=True)
class ColumnDrift:
    """One column's drift test.

    Attributes:
        method: the test (e.g. ``Wasserstein distance (normed)``).
        score: its statistic (a distance, or a p-value for the p-value tests).
        threshold: the score at which (distances) or under which (p-values) it drifts.
        drifted: the test's verdict.
        role: ``feature`` (an input) or ``prediction``.
        type: ``num`` or ``cat``.
    """

    method: str
    score: float
    threshold: float
    drifted: bool
    role: Literal["feature", "prediction"]
    type: str


@dataclass
class DriftResult:
    """The verdict of one report (its JSON is :meth:`to_dict`)."""

    model: str
    version: str
    kind: str
    status: Status
    message: str
    window_start: float
    window_end: float
    reference_rows: int
    current_rows: int
    drift_share: float
    drifted_share: float | None = None
    drift_detected: bool = False
    prediction_drift: bool = False
    columns: dict[str, ColumnDrift] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    location: str | None = None

    @property
    def drifted_columns(self) -> list[str]:
        """Names of the drifted columns, inputs first."""
        drifted = [(c.role != "feature", n) for n, c in self.columns.items() if c.drifted]
        return [n for _, n in sorted(drifted)]

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data."""
        out = asdict(self)
        out["window"] = {
            "start": self.window_start,
            "end": self.window_end,
            "seconds": round(self.window_end - self.window_start, 3),
        }
        del out["window_start"], out["window_end"]
        out["drifted_columns"] = self.drifted_columns
        return out


@dataclass
class DriftReport:
    """A report: its result, the Evidently HTML (None when nothing could be compared)
    and Evidently's own metrics (JSON-ready)."""

    result: DriftResult
    html: str | None = None
    evidently: dict[str, Any] | None = None

    def json_bytes(self) -> bytes:
        """The report's JSON: the result, and Evidently's metrics under ``evidently``."""
        data = self.result.to_dict()
        if self.evidently is not None:
            data["evidently"] = self.evidently
        return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)


def load_reference(registry: ModelRegistry, mv: ModelVersion) -> ReferenceSample | None:
    """The version's reference sample; None when it has none or it cannot be read."""
    data = registry.load_reference(mv)
    if data is None:
        return None
    try:
        return ReferenceSample.from_bytes(data)
    except ValueError as exc:
        logger.warning("reference of %s v%s is unreadable: %s", mv.name, mv.version, exc)
        return None


def build_report(
    mv: ModelVersion,
    reference: ReferenceSample | None,
    traffic: VersionTraffic | None,
    *,
    start: float,
    end: float,
    settings: MonitoringSettings,
) -> DriftReport:
    """Compare ``traffic`` (the version's rows in ``[start, end]``) with ``reference``."""
    rows = 0 if traffic is None else traffic.rows
    result = DriftResult(
        model=mv.name,
        version=mv.version,
        kind=mv.model_schema.kind,
        status="ok",
        message="",
        window_start=start,
        window_end=end,
        reference_rows=0 if reference is None else reference.rows,
        current_rows=rows,
        drift_share=settings.drift_share,
    )
    where = f"{mv.name} v{mv.version}"
    if traffic is not None:
        result.notes.extend(traffic.notes)
    if traffic is None or rows == 0:
        result.status = "no_traffic"
        result.message = f"no logged traffic of {where} in the window"
        return DriftReport(result)
    if reference is None:
        result.status = "no_reference"
        result.message = (
            f"{where} has no reference sample (registered without one): nothing to "
            "compare the window with; the report summarizes the window only"
        )
        return _summary_only(result, mv, traffic)
    if rows < settings.min_rows:
        result.status = "too_little_traffic"
        result.message = (
            f"{rows} logged rows of {where} in the window, fewer than the "
            f"{settings.min_rows} needed to judge drift (SERVEKIT_MONITORING_MIN_ROWS)"
        )
        return DriftReport(result)
    schema = mv.model_schema
    frames = build_frames(
        schema,
        reference.feature_names,
        (reference.features, reference.outputs),
        (traffic.features(), traffic.outputs(schema)),
        components=settings.components,
    )
    result.notes.extend(frames.notes)
    return _compare(result, frames)


def _definition(numerical: list[str], categorical: list[str]) -> Any:
    from evidently import DataDefinition

    return DataDefinition(numerical_columns=numerical, categorical_columns=categorical)


def _compare(result: DriftResult, frames: DriftFrames) -> DriftReport:
    """Run Evidently on both tables and read each column's verdict."""
    from evidently import Dataset, Report
    from evidently.legacy.metrics import DataDriftTable
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    t0 = time.perf_counter()
    definition = _definition(frames.numerical, frames.categorical)
    judged = frames.features or frames.predictions
    metrics: list[Any] = [DataDriftPreset(columns=judged, drift_share=result.drift_share)]
    metrics += [ValueDrift(column=c) for c in frames.predictions if c not in judged]
    metrics.append(DataSummaryPreset())
    snapshot = Report(metrics).run(
        Dataset.from_pandas(frames.current, data_definition=definition),
        Dataset.from_pandas(frames.reference, data_definition=definition),
    )
    # Each column's verdict, as the HTML's drift tables show it: the judged columns' table
    # is the preset's own (computed once), the other predictions get a small one.
    verdicts: dict[str, Any] = {}
    for columns in (judged, [c for c in frames.predictions if c not in judged]):
        if columns:
            table, _ = snapshot.context.get_legacy_metric(
                DataDriftTable(columns=columns), None, None
            )
            verdicts.update(table.drift_by_columns)
    for name, col in verdicts.items():
        result.columns[name] = ColumnDrift(
            method=str(col.stattest_name),
            score=float(col.drift_score),
            threshold=float(col.stattest_threshold),
            drifted=bool(col.drift_detected),
            role="prediction" if name in frames.predictions else "feature",
            type=str(col.column_type),
        )
    drifted = [name for name in judged if result.columns[name].drifted]
    result.drifted_share = len(drifted) / len(judged) if judged else 0.0
    result.drift_detected = bool(judged) and result.drifted_share >= result.drift_share
    result.prediction_drift = any(result.columns[c].drifted for c in frames.predictions)
    result.message = _verdict(result, drifted, len(judged))
    html = snapshot.get_html_str(as_iframe=False)
    logger.info(
        "drift report of %s v%s built in %.2f s: %s",
        result.model,
        result.version,
        time.perf_counter() - t0,
        result.message,
    )
    return DriftReport(result, html, _evidently_metrics(snapshot))


def _verdict(result: DriftResult, drifted: list[str], judged: int) -> str:
    where = f"{result.model} v{result.version}"
    share = f"{len(drifted)} of {judged} columns drifted"
    if result.drift_detected:
        return f"drift in {where}: {share} ({', '.join(drifted)})"
    if drifted:
        return f"no drift in {where}: {share} ({', '.join(drifted)}), under the drift share"
    return f"no drift in {where}: {share}"


def _summary_only(result: DriftResult, mv: ModelVersion, traffic: VersionTraffic) -> DriftReport:
    """An Evidently data summary of the window alone (no reference to compare with)."""
    from evidently import Dataset, Report
    from evidently.presets import DataSummaryPreset

    table, numerical, categorical = current_frame(mv.model_schema, traffic.features())
    if table.empty:
        return DriftReport(result)
    definition = _definition(numerical, categorical)
    snapshot = Report([DataSummaryPreset()]).run(
        Dataset.from_pandas(table, data_definition=definition), None
    )
    return DriftReport(result, snapshot.get_html_str(as_iframe=False), _evidently_metrics(snapshot))


def _evidently_metrics(snapshot: Any) -> dict[str, Any]:
    import evidently

    metrics = json.loads(snapshot.json())["metrics"]
    return {"version": evidently.__version__, "metrics": metrics}
