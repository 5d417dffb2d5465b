"""``servekit models``: list the registry, register a new version, retrain the demo model.

    servekit models list
    servekit models register fraud --file model.onnx [--schema-from 1] [--stage staging]
    servekit models train-demo fraud --seed 7

Only ONNX files are registered (nothing is unpickled at serving time): export a
scikit-learn model with skl2onnx first. A new version takes the input schema of an
existing version of its model (fields, features, tensors, labels), and its graph must
take and give that schema's tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import redis
import typer
from redis.exceptions import RedisError
from rich.table import Table

from services.cli.common import Model, console, err_console, open_registry
from services.errors import ServekitError
from services.registry.versions import ModelRegistry, ModelVersion, Stage, check_onnx_artifact
from services.settings import get_settings
from services.state import keys

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


def _served_versions() -> dict[str, str]:
    """Each model's rollout primary (what the gateways serve), when a Redis is configured."""
    url = get_settings().redis.url
    if url is None:
        return {}
    from services.rollout.transitions import RolloutState

    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        names = [n.decode() for n in client.smembers(keys.rollout_models_key())]  # type: ignore[union-attr]
        raws = [client.hget(keys.rollout_state_key(n), "state") for n in names]
    except RedisError as exc:
        err_console.print(f"[yellow]warning:[/] rollout state not readable ({exc})")
        return {}
    return {
        n: RolloutState.model_validate_json(raw).primary  # type: ignore[arg-type]
        for n, raw in zip(names, raws, strict=True)
        if raw is not None
    }


@models_app.command("list")
def models_list() -> None:
    """Registered models and versions: stage, format, size, metrics, and which one serves."""
    try:
        registry = open_registry()
        names = registry.list_models()
        served = _served_versions()
        table = Table(title=f"models in {registry.store.url}")
        for column in ("model", "version", "stage", "served", "format", "created", "metrics"):
            table.add_column(column)
        for name in names:
            default = registry.get(name).version
            for v in registry.list_versions(name):
                table.add_row(
                    name,
                    v.version,
                    v.stage,
                    "yes" if v.version == served.get(name, default) else "",
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
    file: Annotated[Path, typer.Option("--file", "-f", help="The ONNX model file.")],
    schema_from: Annotated[
        str | None,
        typer.Option(
            "--schema-from", help="Version whose input schema it takes (default: served)."
        ),
    ] = None,
    stage: StageOption = "staging",
    description: Annotated[str | None, typer.Option("--description")] = None,
) -> None:
    """Register an ONNX file as a new version of MODEL, with an existing version's schema."""
    new_stage = _stage(stage)
    if file.suffix.lower() in _NATIVE:
        raise _fail(
            f"{file} is a native (pickled) model: servekit registers ONNX only and never "
            "unpickles; export it first (skl2onnx: convert_sklearn(model, initial_types="
            "[('features', FloatTensorType([None, n]))], options={id(model): {'zipmap': False}}))"
        )
    if not file.is_file():
        raise _fail(f"no such file: {file}")
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
