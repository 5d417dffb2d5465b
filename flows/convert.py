"""Entry points of the conversion: the deployable ``convert`` flow and its command line.

The conversion itself (native model -> ONNX -> TensorRT -> parity -> latency -> register)
is ``flows.conversion.convert_flow``; it is exported here with the native model types it
takes, so ``flows.convert`` is the one place callers import the conversion from.
``python -m flows.convert text-embed`` runs it from the command line with a progress bar.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, cast

from prefect import flow
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from flows.conversion import STEPS, convert_flow
from flows.conversion_report import ConversionReport
from flows.native import NativeModel, SklearnModel, TorchModel
from flows.recipes.text_model import TEXT_MODEL, build_text_model, ensure_text_model
from services.errors import InvalidInputError
from services.registry.stores import open_store
from services.registry.versions import ModelRegistry, Stage
from services.settings import get_settings

__all__ = [
    "STEPS",
    "ConversionReport",
    "NativeModel",
    "SklearnModel",
    "TorchModel",
    "convert",
    "convert_flow",
    "main",
]


@flow(name="convert")
def convert(model: str = TEXT_MODEL, stage: str = "staging") -> dict[str, Any]:
    """The deployable conversion (prefect.yaml): convert a known model into the configured
    registry as a new version, with JSON parameters only. Supported: ``text-embed``."""
    if model != TEXT_MODEL:
        raise InvalidInputError(
            f"no native loader for {model!r}; deployable conversions: {TEXT_MODEL}", field="model"
        )
    if stage not in ("staging", "production"):
        raise InvalidInputError("stage must be 'staging' or 'production'", field="stage")
    settings = get_settings()
    registry = ModelRegistry(open_store(settings.serving))
    mv = build_text_model(registry, settings.convert, stage=cast(Stage, stage))
    return {"model": model, "version": mv.version if mv else None, "store": registry.store.url}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.convert",
        description="Convert a known native model to ONNX (and TensorRT where a GPU exists), "
        "check parity and latency of each format, and register it in the configured store "
        "(SERVEKIT_MODEL_STORE) unless it is there already. Register a model of your own with "
        "`servekit models register`.",
    )
    parser.add_argument(
        "model", choices=[TEXT_MODEL], help=f"the model to build: {TEXT_MODEL} (all-MiniLM-L6-v2)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.convert text-embed``: build text-embed into the configured store."""
    try:
        _parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # --help (0) or a bad argument (2, after argparse's message)
        return int(exc.code or 0)
    settings = get_settings()
    registry = ModelRegistry(open_store(settings.serving))
    console = Console()
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        job = bar.add_task(f"converting {TEXT_MODEL}", total=len(STEPS))

        def step(name: str) -> None:
            bar.update(job, advance=1, description=f"{TEXT_MODEL}: {name} done")

        mv = ensure_text_model(registry, settings.convert, progress=step)
    if mv is None:
        console.print(f"{TEXT_MODEL} is already in {registry.store.url}")
    else:
        console.print(f"registered {TEXT_MODEL} version {mv.version} in {registry.store.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
