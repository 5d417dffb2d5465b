"""Requests every deployment test sends to a served bundle: /predict, an OIP v2 infer
through NVIDIA's tritonclient, /metrics; and waiting for readiness."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

RISKY = {"amount": 4000.0, "merchant_category": "crypto", "hour": 2, "channel": "online"}
GOOD = {"amount": 12.5, "merchant_category": "grocery", "hour": 3, "channel": "online"}


def wait_ready(
    url: str, alive: Callable[[], bool], log: Callable[[], str], timeout_s: float
) -> None:
    """Poll ``url``/v2/health/ready until it answers 200; fail with the server's log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"server exited before it was ready:\n{log()[-4000:]}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server not ready in {timeout_s:.0f}s:\n{log()[-4000:]}")


def check_predict(url: str, user_id: str = "u42") -> dict[str, Any]:
    """POST /predict with a good and a risky record; the fraud model tells them apart."""
    resp = httpx.post(
        f"{url}/predict",
        json={"model": "fraud", "user_id": user_id, "inputs": [GOOD, RISKY]},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    assert body["model"] == "fraud" and body["version"] == "1"
    labels = [p["label"] for p in body["predictions"]]
    assert labels == ["legit", "fraud"], body
    return body


def check_oip_infer(url: str) -> None:
    """An Open Inference Protocol v2 infer through tritonclient (binary tensor data)."""
    import tritonclient.http as tc

    triton = tc.InferenceServerClient(url=url.removeprefix("http://"))
    assert triton.is_server_ready() and triton.is_model_ready("fraud")
    x = np.array([[12.5, 0, 3, 1, 0, 0, 0.03], [4000, 7, 2, 1, 0, 0, 0.03]], dtype=np.float32)
    inp = tc.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = tc.InferRequestedOutput("probabilities", binary_data=True)
    probs = triton.infer("fraud", [inp], outputs=[out]).as_numpy("probabilities")
    assert probs.shape == (2, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert probs[1, 1] > probs[0, 1]


def check_metrics(url: str) -> None:
    """GET /metrics counts the /predict answered before."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    assert (
        'servekit_request_latency_seconds_count{model="fraud",route="predict",version="1"}' in text
    )


def run(cmd: list[str], *, timeout: float = 120, env: dict[str, str] | None = None) -> str:
    """Run ``cmd``; fail with its output when it exits non-zero."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout
