"""Saving reports: the reports location (a folder or S3 over HTTP) and the CLI's folder."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import orjson
import pytest

from monitoring.drift import DriftReport, DriftResult
from monitoring.drift_store import (
    HTML_FILE,
    JSON_FILE,
    report_prefix,
    reports_store,
    save_report,
    write_report,
)
from services.registry.stores import LocalStore, S3Store
from services.settings import MonitoringSettings, ServingSettings
from tests.conftest import free_port


def _report(html: str | None = "<html>report</html>") -> DriftReport:
    result = DriftResult(
        model="fraud", version="1", kind="tabular", status="ok", message="no drift",
        window_start=0.0, window_end=3600.0, reference_rows=10, current_rows=10,
        drift_share=0.1, drifted_share=0.0, created=1_800_000_000.0,
    )  # fmt: skip
    return DriftReport(result, html, {"version": "x", "metrics": []})


def test_prefix_is_model_version_and_utc_time() -> None:
    assert report_prefix("fraud", "2", 1_800_000_000.0) == "fraud/2/20270115T080000Z"


def test_save_to_a_folder(tmp_path: Path) -> None:
    store = reports_store(MonitoringSettings(reports=str(tmp_path)), ServingSettings())
    assert isinstance(store, LocalStore)
    location = save_report(_report(), store)
    folder = Path(location)
    assert folder == tmp_path.resolve() / "fraud/1/20270115T080000Z"
    assert (folder / HTML_FILE).read_text() == "<html>report</html>"
    saved = orjson.loads((folder / JSON_FILE).read_bytes())
    assert saved["location"] == location and saved["evidently"]["version"] == "x"


def test_write_to_the_cli_folder_without_html(tmp_path: Path) -> None:
    written = write_report(_report(html=None), tmp_path / "out")
    assert written == [tmp_path / "out" / JSON_FILE]
    assert orjson.loads(written[0].read_bytes())["status"] == "ok"


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):  # fmt: skip
        monkeypatch.setenv(name, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_save_to_s3(s3_endpoint: str) -> None:
    bucket = f"reports-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    store = reports_store(
        MonitoringSettings(reports=f"s3://{bucket}/drift"),
        ServingSettings(s3_endpoint_url=s3_endpoint),
    )
    assert isinstance(store, S3Store)
    location = save_report(_report(), store)
    assert location == f"s3://{bucket}/drift/fraud/1/20270115T080000Z"
    assert store.get(f"fraud/1/20270115T080000Z/{HTML_FILE}") == b"<html>report</html>"
    assert orjson.loads(store.get(f"fraud/1/20270115T080000Z/{JSON_FILE}"))["model"] == "fraud"
