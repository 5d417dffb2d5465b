"""``servekit autoscale simulate``: files, table and argument checks."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()
WIDE = {"COLUMNS": "220"}  # rich wraps tables to the terminal's width


def test_simulate_writes_json_png_and_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    args = ["autoscale", "simulate", "--trace", "spike", "--out", str(out), "--hours", "2"]
    result = runner.invoke(app, [*args, "--seed", "3", "--cold-start-s", "60"], env=WIDE)
    assert result.exit_code == 0, result.output
    for policy in ("gpu-only", "request-rate-only", "combined"):
        assert policy in result.output
    assert "SLO min breached" in result.output
    doc = json.loads((out / "autoscale.json").read_text())
    assert doc["trace"] == "spike"
    assert doc["options"]["seed"] == 3
    assert doc["options"]["cold_start_s"] == 60.0
    assert len(doc["minutes"]["request_rate"]) == 120
    assert (out / "autoscale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulate_options_reach_the_policy(tmp_path: Path) -> None:
    args = ["autoscale", "simulate", "--out", str(tmp_path), "--hours", "0.5"]
    args += ["--target-percent", "60", "--max-replicas", "7", "--capacity", "250"]
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "autoscale.json").read_text())
    assert doc["trace"] == "diurnal"
    assert (doc["policy"]["target_percent"], doc["policy"]["max_replicas"]) == (60.0, 7)
    assert doc["policy"]["replica_capacity"] == doc["options"]["replica_capacity"] == 250.0
    for run in doc["policies"].values():
        assert run["summary"]["peak_replicas"] <= 7


def test_simulate_rejects_an_unknown_trace(tmp_path: Path) -> None:
    result = runner.invoke(app, ["autoscale", "simulate", "--trace", "x", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert not (tmp_path / "autoscale.json").exists()


def test_autoscale_without_a_verb_shows_help() -> None:
    result = runner.invoke(app, ["autoscale"], env=WIDE)
    assert "simulate" in result.output
