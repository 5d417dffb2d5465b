"""``make demo-rollout PORT=3000``: a whole rollout of a retrained fraud model, in minutes.

Against a gateway started with ``make serve`` on that port, with the gateway's Redis and
model store (``SERVEKIT_REDIS_URL``, ``SERVEKIT_MODEL_STORE``) and a Prefect API URL in
the environment, it:

1. registers a candidate: the demo fraud model retrained with another seed
   (``servekit models train-demo`` when the CLI has it, else the same recipe in-process);
2. gives the model a rollout state when it has none (primary: its served version);
3. starts a Prefect server on a loopback port (left running for the UI), the
   ``servekit`` process work pool, ``prefect deploy --all`` and a worker;
4. sends steady ``/predict`` traffic (``flows.demo_traffic``) while
   ``prefect deployment run rollout/rollout -p profile=demo`` runs to its end;
5. prints the outcome (promoted, or rolled back with the reason), the version
   ``/predict`` answers with now, and where to look in the Prefect UI.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from flows.demo_traffic import TrafficTally, send_traffic
from services.registry.stores import open_store
from services.registry.versions import ModelRegistry
from services.rollout.state import RolloutState, RolloutStore
from services.settings import get_settings
from services.state.redis_clients import connect
from services.state.redis_embedded import resolve_redis_url

STATE_DIR = Path(".servekit")


_T0 = time.monotonic()


def say(message: str) -> None:
    """One progress line of the demo, with the time since it started."""
    print(f"[{time.monotonic() - _T0:6.1f} s] {message}", flush=True)


def wait_http(url: str, timeout_s: float) -> None:
    """Wait until ``url`` answers 200."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer within {timeout_s:g} s")
        time.sleep(0.5)


def _prefect(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), *args],
        capture_output=True,
        text=True,
        check=check,
    )


def register_candidate(model: str, seed: int) -> str:
    """Register the demo model retrained with ``seed``; returns its version."""
    registry = ModelRegistry(open_store(get_settings().serving))
    before = {v.version for v in registry.list_versions(model)}
    servekit = shutil.which("servekit") or str(Path(sys.executable).with_name("servekit"))
    has_verb = (
        subprocess.run([servekit, "models", "train-demo", "--help"], capture_output=True).returncode
        == 0
    )
    if has_verb:
        subprocess.run(
            [servekit, "models", "train-demo", model, "--seed", str(seed)],
            check=True,
            capture_output=True,
        )
    else:
        from flows.recipes.demo_models import train_fraud

        data, metrics = train_fraud(seed=seed)
        schema = registry.get(model).model_schema
        registry.register(
            model,
            data,
            schema=schema,
            metrics=metrics,
            description=f"Demo fraud classifier retrained with seed {seed}.",
        )
    added = sorted(
        {v.version for v in registry.list_versions(model)} - before, key=lambda v: (len(v), v)
    )
    if not added:
        raise SystemExit(f"no new version of {model} was registered")
    return added[-1]


async def ensure_rollout_state(model: str) -> RolloutState:
    """The model's rollout state; created with its served version as primary if missing."""
    async with connect(resolve_redis_url(None)) as client:
        store = RolloutStore(client)
        state = await store.find(model)
        if state is None:
            primary = ModelRegistry(open_store(get_settings().serving)).get(model).version
            state = await store.set_primary(
                model, primary, reason="demo rollout: primary is the served version"
            )
        return state


def start_prefect(port: int) -> None:
    """A Prefect server on 127.0.0.1:``port`` (reused when one answers), left running."""
    health = f"http://127.0.0.1:{port}/api/health"
    try:
        wait_http(health, 1.0)
        say(f"Prefect server already up on port {port}")
        return
    except SystemExit:
        pass
    STATE_DIR.mkdir(exist_ok=True)
    log = (STATE_DIR / "prefect-server.log").open("wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    (STATE_DIR / "prefect-server.pid").write_text(str(server.pid))
    wait_http(health, 120.0)
    say(f"Prefect server up on port {port} (pid {server.pid}, log .servekit/prefect-server.log)")


def deploy_and_start_worker() -> subprocess.Popen[bytes]:
    """The work pool, ``prefect deploy --all`` and a worker (returned, to stop later)."""
    _prefect("work-pool", "create", "servekit", "--type", "process", check=False)
    _prefect("--no-prompt", "deploy", "--all")
    say("deployed every flow of prefect.yaml to the servekit pool")
    log = (STATE_DIR / "prefect-worker.log").open("wb")
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", "servekit"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """Stop the worker as Ctrl-C does; kill it when it does not exit in time."""
    worker.send_signal(signal.SIGINT)
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(timeout=10)


def traffic_in_background(
    url: str, model: str, rate: float
) -> tuple[threading.Thread, threading.Event, list[TrafficTally]]:
    """Demo traffic in a thread until the returned event is set."""
    done = threading.Event()
    out: list[TrafficTally] = []

    def run() -> None:
        async def go() -> TrafficTally:
            stop = asyncio.Event()

            async def watch() -> None:
                while not done.is_set():
                    await asyncio.sleep(0.2)
                stop.set()

            watcher = asyncio.create_task(watch())
            tally = await send_traffic(url, model=model, rate=rate, duration_s=3600, stop=stop)
            await watcher
            return tally

        out.append(asyncio.run(go()))

    thread = threading.Thread(target=run, name="demo-traffic", daemon=True)
    thread.start()
    return thread, done, out


def run_rollout(model: str, candidate: str, timeout_s: int) -> tuple[str, str]:
    """``prefect deployment run rollout/rollout`` with the demo profile, watched to its end.

    Returns the flow run's id and its final state's line.
    """
    command = [
        "deployment", "run", "rollout/rollout",
        "-p", f"model={model}", "-p", f"candidate={candidate}", "-p", "profile=demo",
        "--watch", "--watch-interval", "5", "--watch-timeout", str(timeout_s),
    ]  # fmt: skip
    say("prefect " + " ".join(command))
    done = _prefect(*command, check=False)
    text = done.stdout + done.stderr
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", text)
    final = [line.strip() for line in text.splitlines() if line.startswith("Flow run ")]
    return (match.group(1) if match else ""), (final[-1] if final else text.strip()[-300:])


async def outcome(model: str) -> tuple[RolloutState, str]:
    """The model's rollout state and the reason of its last change."""
    async with connect(resolve_redis_url(None)) as client:
        store = RolloutStore(client)
        state = await store.get(model)
        history = await store.history(model, 1)
    return state, (history[0].reason if history else "")


def answered_version(url: str, model: str) -> str:
    """The version ``/predict`` answers with now (one demo record)."""
    from flows.recipes.synthetic import TransactionGenerator

    record = TransactionGenerator(seed=0).records(1, seed=5)[0]
    body = {"model": model, "user_id": record["user_id"], "inputs": [record]}
    return str(httpx.post(f"{url}/predict", json=body, timeout=10.0).json()["version"])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows.demo_rollout``: the demo rollout end to end; 0 when it finished."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.demo_rollout",
        description="Register a retrained fraud model and roll it out with the demo profile "
        "against a running gateway (make serve), through a local Prefect server.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the gateway")
    parser.add_argument("--model", default="fraud", help="the model to roll out")
    parser.add_argument("--seed", type=int, default=1, help="training seed of the candidate")
    parser.add_argument("--prefect-port", type=int, default=4200, help="Prefect server port")
    parser.add_argument("--rate", type=float, default=40.0, help="demo calls per second")
    parser.add_argument("--timeout", type=int, default=600, help="longest wait for the run")
    args = parser.parse_args(argv)

    wait_http(f"{args.url}/v2/health/ready", 60.0)
    say(f"gateway ready at {args.url}")
    candidate = register_candidate(args.model, args.seed)
    say(f"registered {args.model} version {candidate} (retrained with seed {args.seed})")
    state = asyncio.run(ensure_rollout_state(args.model))
    say(f"{args.model}: primary {state.primary}, mode {state.mode}")
    start_prefect(args.prefect_port)
    worker = deploy_and_start_worker()
    thread, stop, tally = traffic_in_background(args.url, args.model, args.rate)
    say(f"sending {args.rate:g} /predict calls a second")
    try:
        run_id, final = run_rollout(args.model, candidate, args.timeout)
    finally:
        stop.set()
        thread.join(timeout=30)
        stop_worker(worker)
    if tally:
        t = tally[0]
        versions = ", ".join(f"v{v}: {n}" for v, n in sorted(t.versions.items()))
        say(f"traffic: {t.requests} answered ({versions}), {t.failures} failed")
    state, reason = asyncio.run(outcome(args.model))
    say(f"run {run_id or '?'}: {final}")
    promoted = state.primary == candidate and state.mode == "off"
    verdict = "PROMOTED" if promoted else "NOT PROMOTED (rolled back)"
    say(f"{verdict}: primary {state.primary}, mode {state.mode}; last change: {reason}")
    say(f"/predict answers with version {answered_version(args.url, args.model)}")
    ui = f"http://127.0.0.1:{args.prefect_port}"
    print(f"\nPrefect UI: {ui}/runs/flow-run/{run_id}" if run_id else f"\nPrefect UI: {ui}")
    print(f"  artifacts: {ui}/artifacts (rollout-{args.model}, shadow-{args.model}, "
          f"canary-{args.model}, rollout-progress-{args.model})")  # fmt: skip
    print("  stop the Prefect server: kill $(cat .servekit/prefect-server.pid)")
    return 0 if run_id else 1


if __name__ == "__main__":
    raise SystemExit(main())
