"""Daily materialization of the batch feature views.

Reads the last ``days`` of transactions (a Parquet or CSV file, or the synthetic
generator when no source is given), computes ``user_stats`` and ``merchant_risk``, loads
each as a new version that becomes current in one atomic swap, and publishes a markdown
artifact. Scheduled daily at 02:00 by :func:`materialize_deployment`.

Run once: ``python -m flows.materialize`` (directly, without a Prefect server; ``--flow``
runs it as a Prefect flow run); serve on its schedule: ``python -m flows.materialize
--serve``. ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.exceptions import MissingContextError

from flows.recipes.batch_features import merchant_risk, user_stats
from flows.recipes.synthetic import TransactionGenerator
from services.errors import ServekitError
from services.settings import get_settings
from services.state.features import FeatureRegistry, FeatureStore, LoadResult
from services.state.redis_clients import connect
from services.state.redis_embedded import resolve_redis_url

if TYPE_CHECKING:
    import pandas as pd
    from prefect.deployments.runner import RunnerDeployment

logger = logging.getLogger(__name__)

SCHEDULE = "0 2 * * *"
COLUMNS = ("user_id", "amount", "merchant_category", "timestamp", "is_fraud")


class EmptySourceError(ServekitError):
    """The source held no transactions in the window: loading it would blank the views."""


def _log() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run's logger inside a Prefect run; the module's logger when called directly."""
    try:
        return get_run_logger()  # type: ignore[return-value]
    except MissingContextError:
        return logger


def check_source(source: str | None) -> None:
    """Raise FileNotFoundError or ValueError (naming the file) unless ``source`` is usable."""
    if source is None:
        return
    path = Path(source)
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"unsupported source {source!r}: expected .parquet or .csv")
    if not path.is_file():
        raise FileNotFoundError(f"source {source} does not exist (or is not a file)")


@task(retries=2, retry_delay_seconds=5)
def read_transactions(
    source: str | None, as_of: datetime, days: int, synthetic_rows: int = 50_000
) -> pd.DataFrame:
    """Transactions in ``[as_of - days, as_of)`` from a Parquet/CSV path or the generator."""
    import pandas as pd

    log = _log()
    check_source(source)
    if source is None:
        frame = TransactionGenerator(seed=0).history(days=days, n=synthetic_rows, end=as_of)
        log.info("generated %d synthetic transactions", len(frame))
    else:
        path = Path(source)
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        log.info("read %d transactions from %s", len(frame), source)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"source lacks columns {missing}")
    frame = frame.assign(timestamp=pd.to_datetime(frame["timestamp"], utc=True))
    start = pd.Timestamp(as_of - timedelta(days=days))
    window = frame[(frame["timestamp"] >= start) & (frame["timestamp"] < pd.Timestamp(as_of))]
    if window.empty:
        raise EmptySourceError(f"no transactions between {start} and {as_of}")
    return window.reset_index(drop=True)


@task
def compute_user_stats(transactions: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The ``user_stats`` view: per user, mean amount and number of transactions."""
    return user_stats(transactions)


@task
def compute_merchant_risk(transactions: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The ``merchant_risk`` view: per merchant category, the smoothed fraud rate."""
    return merchant_risk(transactions)


@task(retries=3, retry_delay_seconds=[1, 5, 15])
async def load_view(
    view: str, rows: dict[str, dict[str, float]], materialized_at: datetime, redis_url: str
) -> LoadResult:
    """Write ``rows`` as a new version of ``view`` and make it current atomically."""
    settings = get_settings().features
    client = connect(redis_url)
    try:
        store = FeatureStore(client, FeatureRegistry.from_settings(settings), settings)
        result = await store.load_batch_view(view, rows, materialized_at)
    finally:
        await client.aclose()
    _log().info(
        "%s: version %s current, %d rows in %.2f s", view, result.version, result.rows,
        result.seconds,
    )  # fmt: skip
    return result


@task
async def publish_summary(results: list[LoadResult], as_of: datetime, seconds: float) -> None:
    """A markdown artifact: one line per view with rows, version and load time."""
    lines = [
        f"# Feature materialization as of {as_of.isoformat()}",
        "",
        "| view | rows | version | previous | load s |",
        "|---|---:|---|---|---:|",
        *(
            f"| {r.view} | {r.rows} | `{r.version}` | `{r.previous_version or '-'}` "
            f"| {r.seconds:.2f} |"
            for r in results
        ),
        "",
        f"Total: {seconds:.2f} s.",
    ]
    await acreate_markdown_artifact(
        "\n".join(lines), key="feature-materialization", description="Batch feature load"
    )


@flow(name="materialize-features")
async def materialize(
    source: str | None = None,
    as_of: datetime | None = None,
    days: int = 30,
    redis_url: str | None = None,
) -> dict[str, LoadResult]:
    """Compute and load the batch feature views.

    Args:
        source: a Parquet or CSV file of transactions; None: the synthetic generator.
        as_of: end of the window (default: now, UTC); also the views' materialization time.
        days: length of the window.
        redis_url: where to load (default: settings, else the embedded Redis).
    """
    started = time.perf_counter()
    as_of = (as_of or datetime.now(UTC)).astimezone(UTC)
    url = resolve_redis_url(redis_url)
    transactions = read_transactions(source, as_of, days)
    user_stats = compute_user_stats(transactions)
    merchant_risk = compute_merchant_risk(transactions)
    results = [
        await load_view("user_stats", user_stats, as_of, url),
        await load_view("merchant_risk", merchant_risk, as_of, url),
    ]
    await publish_summary(results, as_of, time.perf_counter() - started)
    return {r.view: r for r in results}


def materialize_deployment(name: str = "daily", **parameters: Any) -> RunnerDeployment:
    """A deployment of :func:`materialize` on its daily 02:00 schedule (call from sync code;
    in async code use ``await materialize.ato_deployment(...)``)."""
    deployment = materialize.to_deployment(name=name, cron=SCHEDULE, parameters=parameters)
    return cast("RunnerDeployment", deployment)


async def materialize_now(
    source: str | None = None,
    as_of: datetime | None = None,
    days: int = 30,
    redis_url: str | None = None,
) -> dict[str, LoadResult]:
    """The same computation and load as :func:`materialize`, called directly: no flow run,
    so no Prefect server (nor a temporary one) and no artifact. ``make serve`` uses it."""
    as_of = (as_of or datetime.now(UTC)).astimezone(UTC)
    url = resolve_redis_url(redis_url)
    transactions = read_transactions.fn(source, as_of, days)
    results = [
        await load_view.fn("user_stats", user_stats(transactions), as_of, url),
        await load_view.fn("merchant_risk", merchant_risk(transactions), as_of, url),
    ]
    return {r.view: r for r in results}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.materialize",
        description="Compute the batch feature views (user_stats, merchant_risk) from the last "
        "DAYS of transactions and load them into Redis as new versions, swapped in atomically.",
    )
    parser.add_argument(
        "--source",
        help="a .parquet or .csv file of transactions (default: the synthetic demo data)",
    )
    parser.add_argument("--days", type=int, default=30, help="window length in days (default 30)")
    parser.add_argument(
        "--as-of",
        type=datetime.fromisoformat,
        help="end of the window, ISO 8601 (default: now, UTC)",
    )
    parser.add_argument(
        "--redis-url", help="where to load (default: SERVEKIT_REDIS_URL, else the embedded Redis)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--flow",
        action="store_true",
        help="run as a Prefect flow run (tracked, with its artifact; needs a Prefect API "
        "or starts a temporary server)",
    )
    mode.add_argument(
        "--serve", action="store_true", help="serve the daily deployment (02:00 UTC) until stopped"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.materialize``: load the views once (or serve the schedule)."""
    args = _parser().parse_args(argv)
    if args.days < 1:
        print("error: --days must be at least 1", file=sys.stderr)
        return 2
    if args.serve:
        materialize.serve(name="daily", cron=SCHEDULE)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = materialize if args.flow else materialize_now
    try:
        check_source(args.source)
        results = asyncio.run(run(args.source, args.as_of, args.days, args.redis_url))
    except (OSError, ValueError, ServekitError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for r in results.values():
        print(f"{r.view}: {r.rows} rows, version {r.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
