"""Steady load for the fault suite: predictions, events and feedback at fixed rates, every
answer recorded, then counted against the fault's window.

``SteadyLoad`` runs open-loop (a request leaves on schedule whether or not earlier ones
came back) on its own thread and event loop, so a fault can be injected from ordinary
code while it runs. An event answered 202 names its stream id and a feedback answered
201 its request id: ``events_lost`` and ``feedback_lost`` check afterwards that each is
still there, which is what "accepted" must mean.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx

GOOD = {"amount": 12.5, "merchant_category": "grocery", "hour": 3, "channel": "online"}
# Headers of the ingest routes (/events, /feedback); a token header goes here.
INGEST_HEADERS: dict[str, str] = {}
# What a client may be answered under a fault: success, or 503 saying when to come back.
OK_STATUSES = {200, 201, 202}


@dataclass
class Outcome:
    """One request: its kind, when it left and came back, and the answer.

    ``status`` 0 is a client-side failure (refused connection, timeout); ``ident`` is the
    event's stream id (events), the signed request id (predictions, feedback); ``origin``, for
    feedback, is when its prediction was answered.
    """

    kind: str
    start: float
    end: float
    status: int
    retry_after: str | None = None
    ident: str | None = None
    detail: str = ""
    origin: float | None = None
    error_type: str | None = None

    @property
    def fine(self) -> bool:
        """Success, or a 503 with Retry-After (a refusal the client can act on)."""
        if self.status in OK_STATUSES:
            return True
        return self.status == 503 and self.retry_after is not None


class SteadyLoad:
    """Predictions, events and feedback against ``url`` at fixed rates (per second).

    Args:
        url: the gateway.
        predict_hz, event_hz, feedback_hz: request rates; feedback is sent for request ids
            of earlier answered predictions, each once.
        timeout_s: a request's whole budget; past it it counts as a client-side failure.
    """

    def __init__(
        self,
        url: str,
        *,
        predict_hz: float = 20.0,
        event_hz: float = 10.0,
        feedback_hz: float = 5.0,
        timeout_s: float = 10.0,
        model: str = "fraud",
    ) -> None:
        self.url = url
        self.rates = {"predict": predict_hz, "event": event_hz, "feedback": feedback_hz}
        self.timeout_s = timeout_s
        self.model = model
        self.outcomes: list[Outcome] = []
        self._answered: deque[tuple[str, float]] = deque(maxlen=10_000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-load", daemon=True)
        self._seq = 0
        self.second_version: str | None = None
        """When set, every other prediction asks for this version of the model."""

    def __enter__(self) -> SteadyLoad:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, ready_timeout_s: float = 30.0) -> None:
        """Start sending; return once a prediction has been answered."""
        self._thread.start()
        deadline = time.monotonic() + ready_timeout_s
        while not any(o.kind == "predict" and o.status == 200 for o in self.outcomes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no prediction answered in {ready_timeout_s} s")
            time.sleep(0.05)

    def stop(self) -> list[Outcome]:
        """Stop sending and wait for the requests in flight; every outcome."""
        self._stop.set()
        self._thread.join(self.timeout_s + 10)
        return self.outcomes

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            tasks: set[asyncio.Task[None]] = set()
            await asyncio.gather(
                *(self._tick(session, kind, hz, tasks) for kind, hz in self.rates.items() if hz)
            )
            if tasks:
                await asyncio.gather(*tasks)

    async def _tick(
        self, session: aiohttp.ClientSession, kind: str, hz: float, tasks: set[asyncio.Task[None]]
    ) -> None:
        period = 1.0 / hz
        due = time.monotonic()
        while not self._stop.is_set():
            request = self._request(kind)
            if request is not None:
                task = asyncio.create_task(self._send(session, kind, *request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            due += period
            await asyncio.sleep(max(0.0, due - time.monotonic()))  # the schedule, not a wait

    def _request(self, kind: str) -> tuple[str, dict[str, Any], dict[str, str]] | None:
        self._seq += 1
        n = self._seq
        if kind == "predict":
            # A new amount each time: every prediction reaches the model (no cache hit).
            record = {**GOOD, "amount": 10.0 + n / 1000}
            body = {"model": self.model, "user_id": f"u{n % 50}", "inputs": [record]}
            if self.second_version is not None and n % 2:
                body["version"] = self.second_version
            return "/predict", body, {}
        if kind == "event":
            body = {"timestamp": time.time(), "entities": {"user": f"u{n % 50}"}, "amount": 1.0}
            return "/events", body, INGEST_HEADERS
        # Feedback for the latest prediction answered at least a second ago (its record
        # written): the newest, so that feedback does not fall behind the predictions.
        if not self._answered:
            return None
        request_id, answered = self._answered.pop()
        body = {"signed_request_id": request_id, "outcome": n % 2, "_answered": answered}
        return "/feedback", body, INGEST_HEADERS

    async def _send(
        self, session: aiohttp.ClientSession, kind: str, path: str, body: Any, hdrs: dict[str, str]
    ) -> None:
        start = time.monotonic()
        origin = body.pop("_answered", None)
        ident = body.get("signed_request_id") if kind == "feedback" else None
        try:
            async with session.post(f"{self.url}{path}", json=body, headers=hdrs) as resp:
                doc = await resp.json(content_type=None)
                out = Outcome(kind, start, time.monotonic(), resp.status)
                out.retry_after = resp.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            self.outcomes.append(Outcome(kind, start, time.monotonic(), 0, detail=repr(exc)))
            return
        if out.status == 202 and kind == "event":
            ident = doc.get("id")
        elif out.status == 200 and kind == "predict":
            ident = doc.get("signed_request_id")  # what /feedback takes
            loop = asyncio.get_running_loop()
            loop.call_later(1.0, self._answered.append, (ident, out.end))
        elif out.status not in OK_STATUSES:
            out.detail = str(doc)[:300]
            out.error_type = doc.get("type") if isinstance(doc, dict) else None
        out.ident = ident
        out.origin = origin
        self.outcomes.append(out)


def summarize(outcomes: list[Outcome], fault_end: float) -> dict[str, Any]:
    """Counts over the whole run and the recovery time.

    ``recover_s``: from the end of the fault (resume, restart; for a fault that heals by
    itself, its start) to the last failed answer; 0 when every request after it succeeded.
    ``failing_s``: from the first failed request's start to the last one's answer.
    """
    bad_after = [o.end for o in outcomes if o.status not in OK_STATUSES and o.end > fault_end]
    recover_s = max(bad_after) - fault_end if bad_after else 0.0
    bad = [o for o in outcomes if o.status not in OK_STATUSES]
    failing_s = max(o.end for o in bad) - min(o.start for o in bad) if bad else 0.0
    unfine = [o for o in outcomes if not o.fine]
    return {
        "requests": len(outcomes),
        "failed": sum(o.status not in OK_STATUSES for o in outcomes),
        "503": sum(o.status == 503 for o in outcomes),
        "unexplained": len(unfine),
        "unexplained_examples": sorted({f"{o.kind} {o.status} {o.detail}" for o in unfine})[:5],
        "by_kind": {
            kind: {
                "sent": sum(o.kind == kind for o in outcomes),
                "ok": sum(o.kind == kind and o.status in OK_STATUSES for o in outcomes),
            }
            for kind in ("predict", "event", "feedback")
        },
        "refused_as": dict(Counter(str(o.error_type) for o in outcomes if o.status == 503)),
        "slowest_ms": round(1000 * max((o.end - o.start for o in outcomes), default=0.0)),
        "failing_s": round(failing_s, 2),
        "recover_s": round(recover_s, 2),
    }


def events_lost(redis_url: str, outcomes: list[Outcome]) -> int:
    """Events answered 202 whose stream entry is missing from the event stream."""
    import redis

    from services.state.keys import event_stream_key

    accepted = [o.ident for o in outcomes if o.kind == "event" and o.status == 202]
    client = redis.Redis.from_url(redis_url)
    try:
        with client.pipeline(transaction=False) as pipe:
            for entry_id in accepted:
                pipe.xrange(event_stream_key(), entry_id, entry_id)
            found = pipe.execute()
    finally:
        client.close()
    return sum(not entries for entries in found)


def feedback_lost(url: str, outcomes: list[Outcome]) -> int:
    """Feedback answered 201 that the gateway no longer knows: sent again, each must be
    refused as already recorded (409)."""
    accepted = [o.ident for o in outcomes if o.kind == "feedback" and o.status == 201]
    lost = 0
    with httpx.Client(timeout=10, headers=INGEST_HEADERS) as client:
        for request_id in accepted:
            body = {"signed_request_id": request_id, "outcome": 1}
            again = client.post(f"{url}/feedback", json=body)
            lost += again.status_code != 409
    return lost


def wait_until(check: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> float:
    """Poll ``check()`` until true; the seconds it took (``TimeoutError`` past the limit)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(interval_s)
    return time.monotonic() - start
