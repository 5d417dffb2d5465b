"""``versions.py --calls``: two gateways from the same code count the same Python calls per
request, and the count is the request path's (hundreds of calls), not idle time's."""

from __future__ import annotations

import contextlib
from pathlib import Path

import orjson

from benchmarks.common import ROOT, Server
from benchmarks.versions import PATHS, count_calls
from flows.recipes.synthetic import TransactionGenerator


def test_the_same_code_counts_the_same_calls(
    fraud_store: Path, serving_redis_url: str, tmp_path: Path
) -> None:
    env = {
        "SERVEKIT_MODEL_STORE": str(fraud_store),
        "SERVEKIT_REDIS_URL": serving_redis_url,
        "PYTHONPATH": str(ROOT / "benchmarks" / "callcount"),
        **PATHS["lean"],
    }
    bodies = [
        orjson.dumps({"model": "fraud", "inputs": [r]})
        for r in TransactionGenerator(seed=3).records(500)
    ]
    with contextlib.ExitStack() as stack:
        servers = {}
        for side in ("a", "b"):
            servers[side] = Server(env, tmp_path / f"{side}.log")
            stack.callback(servers[side].stop)
        calls = count_calls(servers, {"a": ROOT, "b": ROOT}, bodies, 300)
    per_request = calls["calls_per_request"]
    assert per_request["a"] > 100, per_request  # the request path, not the idle loop
    assert abs(per_request["a"] - per_request["b"]) < 0.05 * per_request["a"], calls
    assert not [d for d in calls["differences"] if abs(d["a"] - d["b"]) >= 2], calls
