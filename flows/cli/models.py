"""``servekit models``: list the registry, register a new version, retrain the demo model.

    servekit models list
    servekit models register fraud --file model.onnx [--schema-from 1] [--stage staging]
    servekit models train-demo fraud --seed 7

An ONNX file is registered as it is; a scikit-learn pickle (.joblib, .pkl) goes through
the conversion flow (ONNX export, parity against the native model) and only its ONNX
graph is registered: nothing is unpickled at serving time. A new version takes the input
schema of an existing version of its model (fields, features, tensors, labels), and its
graph must take and give that schema's tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import numpy as np
import typer
from redis.exceptions import RedisError
from rich.table import Table

from flows.cli.common import Model, console, err_console, open_registry
from services.errors import ServekitError
from services.registry.schema import ModelSchema
from services.registry.versions import ModelRegistry, ModelVersion, Stage, check_onnx_artifact
from services.rollout.transitions import RolloutState, served_stage
from services.settings import get_settings
from services.state import keys
from services.state.redis_clients import connect_sync

models_app = typer.Typer(help="The model registry: list, register a version, retrain the demo.")

StageOption = Annotated[
    str, typer.Option("--stage", help="Stage of the new version: staging or production.")
]
_NATIVE = (".pkl", ".pickle", ".joblib")


def _fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/] {message}")
    return typer.Exit(code)


def _stage(stage: str) -> Stage:
    if stage not in ("staging", "production"):
        raise _fail(f"--stage must be 'staging' or 'production', not {stage!r}", 2)
    return cast(Stage, stage)


def _rollout_states() -> dict[str, RolloutState]:
    """Every model's rollout state (what the gateways serve), when a Redis is configured."""
    url = get_settings().redis.url
    if url is None:
        return {}
    try:
        client = connect_sync(url, socket_timeout=2)
        names = [n.decode() for n in client.smembers(keys.rollout_models_key())]  # type: ignore[union-attr]
        raws = [client.hget(keys.rollout_state_key(n), "state") for n in names]
    except RedisError as exc:
        err_console.print(f"[yellow]warning:[/] rollout state not readable ({exc})")
        return {}
    return {
        n: RolloutState.model_validate_json(raw)  # type: ignore[arg-type]
        for n, raw in zip(names, raws, strict=True)
        if raw is not None
    }


@models_app.command("list")
def models_list() -> None:
    """Registered models and versions: stage, format, size, metrics, and which one serves."""
    try:
        registry = open_registry()
        names = registry.list_models()
        states = _rollout_states()
        table = Table(title=f"models in {registry.store.url}")
        for column in ("model", "version", "stage", "served", "format", "created", "metrics"):
            table.add_column(column)
        for name in names:
            state = states.get(name)
            served = state.primary if state is not None else registry.get(name).version
            for v in registry.list_versions(name):
                table.add_row(
                    name,
                    v.version,
                    served_stage(v.version, v.stage, state),
                    _serving(v.version, served, state),
                    v.format,
                    v.created.isoformat(timespec="seconds"),
                    ", ".join(f"{k}={m}" for k, m in v.metrics.items() if k != "trainer"),
                )
    except ServekitError as exc:
        raise _fail(exc.message) from exc
    if not names:
        console.print(f"no models in {registry.store.url} (make models builds the demo)")
        return
    console.print(table)


def _serving(version: str, served: str, state: RolloutState | None) -> str:
    if version == served:
        return "yes"
    if state is not None and version == state.candidate and state.mode != "off":
        return f"{state.mode} {state.percent:g} %" if state.mode != "shadow" else "shadow"
    return ""


def _schema_source(registry: ModelRegistry, model: str, version: str | None) -> ModelVersion:
    try:
        return registry.get(model, version)
    except ServekitError as exc:
        what = f"version {version!r} of {model!r}" if version else f"a version of {model!r}"
        raise _fail(
            f"{exc.message}: a new version takes the input schema of {what}; register the "
            "model's first version with its schema from code (ModelRegistry.register)"
        ) from exc


@models_app.command("register")
def models_register(
    model: Model,
    file: Annotated[
        Path,
        typer.Option("--file", "-f", help="An ONNX file, or a scikit-learn .joblib/.pkl."),
    ],
    schema_from: Annotated[
        str | None,
        typer.Option(
            "--schema-from", help="Version whose input schema it takes (default: served)."
        ),
    ] = None,
    stage: StageOption = "staging",
    description: Annotated[str | None, typer.Option("--description")] = None,
) -> None:
    """Register an ONNX file (or a converted scikit-learn pickle) as a new version of
    MODEL, with the input schema of an existing version."""
    new_stage = _stage(stage)
    if not file.is_file():
        raise _fail(f"no such file: {file}")
    if file.suffix.lower() in _NATIVE:
        _register_native(model, file, schema_from, new_stage)
        return
    registry = open_registry()
    source = _schema_source(registry, model, schema_from)
    artifact = file.read_bytes()
    try:
        check_onnx_artifact(artifact, source.model_schema)
        mv = registry.register(
            model,
            artifact,
            schema=source.model_schema,
            stage="staging",
            description=description or f"registered from {file.name}",
        )
        if new_stage == "production":
            mv = registry.set_stage(model, mv.version, "production")
    except ServekitError as exc:
        raise _fail(f"{file} not registered: {exc.message}") from exc
    _registered(mv, source)


def _register_native(model: str, file: Path, schema_from: str | None, stage: Stage) -> None:
    """A scikit-learn pickle goes through the conversion flow (ONNX export, parity against
    the native model, latency) and only its ONNX graph is registered."""
    registry = open_registry()
    source = _schema_source(registry, model, schema_from)
    schema = source.model_schema
    try:
        import joblib

        from flows.convert import SklearnModel, convert_flow
    except ImportError as exc:
        raise _fail(f"converting a native model needs the 'demo' extra: {exc}") from exc
    # The user's own file, loaded here in the CLI to export it; the server never unpickles.
    try:
        estimator = joblib.load(file)
    except Exception as exc:  # a broken or foreign pickle raises anything
        raise _fail(f"{file} is not a loadable scikit-learn model: {exc}") from exc
    native = SklearnModel(
        estimator,
        schema,
        {schema.inputs[0].name: holdout_rows(schema)},
        task="classifier" if schema.labels else "regressor",
        description=f"converted from {file.name}",
    )
    try:
        report = convert_flow(model, native, registry, stage=stage)
    except (ServekitError, RuntimeError, ValueError) as exc:
        message = exc.message if isinstance(exc, ServekitError) else str(exc)
        raise _fail(f"{file} not registered: {message}") from exc
    if report.registered is None:
        raise _fail(f"{file} not registered: the conversion registered no version")
    _registered(report.registered, source)


def holdout_rows(schema: ModelSchema, n: int = 256, seed: int = 0) -> np.ndarray:
    """Rows for the parity check, drawn within each field's range (categories as indexes);
    parity compares the native model with its ONNX graph, so any in-range rows will do."""
    rng = np.random.default_rng(seed)
    width = int(schema.inputs[0].shape[-1])
    if len(schema.fields) != width:
        return rng.standard_normal((n, width)).astype(np.float32)
    columns: list[np.ndarray] = []
    for f in schema.fields:
        if f.dtype == "category":
            columns.append(rng.integers(0, len(f.categories or [0]), n).astype(np.float32))
            continue
        low = f.min if f.min is not None else 0.0
        high = min(f.max if f.max is not None else low + 1000.0, low + 1000.0)
        column = rng.uniform(low, high, n)
        columns.append(np.round(column) if f.dtype == "int" else column)
    return np.stack(columns, axis=1).astype(np.float32)


def _registered(mv: ModelVersion, source: ModelVersion | None) -> None:
    taken = f", schema of version {source.version}" if source is not None else ""
    console.print(
        f"registered {mv.name} version {mv.version} ({mv.stage}{taken}, sha256 {mv.sha256[:12]})"
    )
    console.print(
        f"roll it out: prefect deployment run rollout/rollout -p model={mv.name} "
        f"-p candidate={mv.version}   (or: servekit rollout shadow {mv.name} {mv.version})"
    )


@models_app.command("train-demo")
def models_train_demo(
    model: Annotated[str, typer.Argument(help="The demo model: fraud.")],
    seed: Annotated[int, typer.Option("--seed", help="Training seed (the demo's first: 0).")],
    stage: StageOption = "staging",
) -> None:
    """Retrain the demo model with another seed and register it as a new version."""
    new_stage = _stage(stage)
    if model != "fraud":
        raise _fail(f"no demo recipe for {model!r}; the demo model is 'fraud'", 2)
    try:
        from flows.recipes.demo_models import retrain_fraud
    except ImportError as exc:  # the CLI runs from an install without flows/
        raise _fail(f"the demo recipes are not importable: {exc}") from exc
    registry = open_registry()
    try:
        with console.status(f"training {model} with seed {seed} (about 5 s)"):
            mv = retrain_fraud(registry, seed, stage="staging")
        if new_stage == "production":
            mv = registry.set_stage(model, mv.version, "production")
    except RuntimeError as exc:  # the demo extra (scikit-learn, skl2onnx) is missing
        raise _fail(str(exc)) from exc
    except ServekitError as exc:
        raise _fail(exc.message) from exc
    console.print(f"metrics: {mv.metrics}")
    _registered(mv, None)
