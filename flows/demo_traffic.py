"""Steady demo traffic for a rollout: ``/predict`` calls with users of the demo feature store.

A rollout's shadow and canary stages judge live traffic; on a demo gateway there is none.
This sends one-record ``/predict`` calls at a steady rate, drawn from the same synthetic
world as the demo fraud model and its materialized features (users ``u000000`` to
``u000999``), and tallies the versions that answered.

With ``--outcomes`` each answer's outcome (the synthetic record's fraud label) follows on
``POST /feedback`` with the answer's ``signed_request_id``, so A/B experiments get
outcomes; the ingest token is ``SERVEKIT_INGEST_TOKEN`` (unset: fine against a gateway on
the loopback, which takes ingest from local clients without one).

Run: ``python -m flows.demo_traffic --url http://127.0.0.1:3000 --rate 40 --duration 300``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from flows.recipes.synthetic import TransactionGenerator
from services.settings import get_settings

logger = logging.getLogger(__name__)


@dataclass
class TrafficTally:
    """What the generator saw: answers per version, failures, and the time it ran."""

    versions: Counter[str] = field(default_factory=Counter)
    failures: int = 0
    seconds: float = 0.0
    outcomes: int = 0
    """Outcomes the gateway counted (``--outcomes``)."""
    outcome_failures: int = 0

    @property
    def requests(self) -> int:
        """Calls answered."""
        return sum(self.versions.values())


async def _predict(
    client: httpx.AsyncClient, model: str, record: dict[str, Any], tally: TrafficTally
) -> dict[str, Any] | None:
    """One ``/predict`` call; its answer, or None (counted as a failure)."""
    body = {"model": model, "user_id": record["user_id"], "inputs": [record]}
    try:
        response = await client.post("/predict", json=body)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        tally.versions[str(answer["version"])] += 1
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        tally.failures += 1
        if tally.failures <= 3:
            logger.warning("demo /predict failed: %s", exc)
        return None
    return answer


async def _outcome(
    client: httpx.AsyncClient, answer: dict[str, Any], label: bool, tally: TrafficTally
) -> None:
    """The answer's outcome on ``/feedback`` (the ingest token is the client's header)."""
    doc = {"signed_request_id": answer.get("signed_request_id"), "outcome": int(label)}
    try:
        response = await client.post("/feedback", json=doc)
        response.raise_for_status()
        tally.outcomes += 1
    except httpx.HTTPError as exc:
        tally.outcome_failures += 1
        if tally.outcome_failures <= 3:
            logger.warning("demo /feedback failed: %s", exc)


async def send_traffic(
    url: str,
    *,
    model: str = "fraud",
    rate: float = 40.0,
    duration_s: float = 300.0,
    seed: int = 11,
    stop: asyncio.Event | None = None,
    concurrency: int = 8,
    transport: httpx.AsyncBaseTransport | None = None,
    outcomes: bool = False,
    ingest_token: str | None = None,
) -> TrafficTally:
    """Send ``rate`` calls a second for ``duration_s`` (or until ``stop`` is set).

    Calls are started on a fixed schedule and run concurrently (at most ``concurrency``),
    so a slow answer does not slow the rate down. ``transport``: an httpx transport to
    send through instead of the network. ``outcomes``: post each answer's outcome to
    ``/feedback`` with ``ingest_token`` as its bearer token.
    """
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration_s must be > 0")
    tally = TrafficTally()
    generator = TransactionGenerator(seed=0)  # the demo feature store's users
    records: Iterator[dict[str, Any]] = iter(())
    slots = asyncio.Semaphore(concurrency)
    t0 = time.monotonic()
    headers = {"Authorization": f"Bearer {ingest_token}"} if ingest_token else None
    async with httpx.AsyncClient(
        base_url=url, timeout=10.0, transport=transport, headers=headers
    ) as client:

        async def one(record: dict[str, Any]) -> None:
            async with slots:
                label = bool(record.pop("is_fraud", False))
                answer = await _predict(client, model, record, tally)
                if outcomes and answer is not None:
                    await _outcome(client, answer, label, tally)

        pending: set[asyncio.Task[None]] = set()
        sent = 0
        while (stop is None or not stop.is_set()) and time.monotonic() - t0 < duration_s:
            record = next(records, None)
            if record is None:
                records = iter(generator.records(500, with_label=outcomes, seed=seed + sent))
                continue
            task = asyncio.create_task(one(record))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
            await asyncio.sleep(max(t0 + sent / rate - time.monotonic(), 0.0))
        await asyncio.gather(*pending)
    tally.seconds = time.monotonic() - t0
    return tally


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows.demo_traffic``: send demo traffic and print the tally."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.demo_traffic",
        description="Send steady /predict traffic with users of the demo feature store.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the gateway")
    parser.add_argument("--model", default="fraud", help="the model to call")
    parser.add_argument("--rate", type=float, default=40.0, help="calls per second")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds to run")
    parser.add_argument("--seed", type=int, default=11, help="seed of the records")
    parser.add_argument(
        "--outcomes",
        action="store_true",
        help="also post each answer's outcome to /feedback (token: SERVEKIT_INGEST_TOKEN)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tally = asyncio.run(
        send_traffic(
            args.url,
            model=args.model,
            rate=args.rate,
            duration_s=args.duration,
            seed=args.seed,
            outcomes=args.outcomes,
            ingest_token=get_settings().serving.ingest_token if args.outcomes else None,
        )
    )
    versions = ", ".join(f"v{v}: {n}" for v, n in sorted(tally.versions.items())) or "none"
    print(
        f"{tally.requests} answered in {tally.seconds:.0f} s ({versions}); {tally.failures} failed"
    )
    if args.outcomes:
        print(f"{tally.outcomes} outcomes counted; {tally.outcome_failures} refused or failed")
    return 0 if tally.requests else 1


if __name__ == "__main__":
    raise SystemExit(main())
