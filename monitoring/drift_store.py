"""Where drift reports are kept: the reports location, or a folder the CLI names.

The reports location (``SERVEKIT_MONITORING_REPORTS``) is a local folder or
``s3://bucket/prefix``, written through the registry's artifact stores. Each report is
two files under ``<model>/<version>/<UTC time>/``: ``drift.html`` (self-contained,
Evidently's) and ``drift.json`` (the result, see ``monitoring.drift``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from services.registry.stores import ArtifactStore, LocalStore, S3Store

if TYPE_CHECKING:
    from monitoring.drift import DriftReport
    from services.settings import MonitoringSettings, ServingSettings

HTML_FILE = "drift.html"
JSON_FILE = "drift.json"


def reports_store(monitoring: MonitoringSettings, serving: ServingSettings) -> ArtifactStore:
    """The store of the reports location (S3 with the serving settings' endpoint)."""
    where = monitoring.reports
    if where.startswith("s3://"):
        return S3Store(
            where,
            endpoint_url=serving.s3_endpoint_url,
            connect_timeout_s=serving.s3_connect_timeout_s,
            read_timeout_s=serving.s3_read_timeout_s,
            max_attempts=serving.s3_max_attempts,
        )
    return LocalStore(where)


def report_prefix(model: str, version: str, created: float) -> str:
    """The key prefix of one report: ``<model>/<version>/<UTC time>``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(created))
    return f"{model}/{version}/{stamp}"


def location_of(store: ArtifactStore, prefix: str) -> str:
    """Where a prefix of ``store`` is, for people: a folder path or an ``s3://`` URL."""
    if isinstance(store, LocalStore):
        return str(store.root / prefix)
    return f"{store.url.rstrip('/')}/{prefix}"


def save_report(report: DriftReport, store: ArtifactStore) -> str:
    """Write the report's HTML (when there is one) and JSON; returns its location, which
    is also recorded in the result (and so in the JSON)."""
    result = report.result
    prefix = report_prefix(result.model, result.version, result.created)
    result.location = location_of(store, prefix)
    if report.html is not None:
        store.put(f"{prefix}/{HTML_FILE}", report.html.encode())
    store.put(f"{prefix}/{JSON_FILE}", report.json_bytes())
    return result.location


def write_report(report: DriftReport, folder: Path) -> list[Path]:
    """Write ``drift.html`` (when there is one) and ``drift.json`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    report.result.location = str(folder.resolve())
    written = []
    if report.html is not None:
        (folder / HTML_FILE).write_text(report.html, encoding="utf-8")
        written.append(folder / HTML_FILE)
    (folder / JSON_FILE).write_bytes(report.json_bytes())
    written.append(folder / JSON_FILE)
    return written
