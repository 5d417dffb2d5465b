"""The ``servekit`` command line.

``app`` is the console script's entry point (``servekit = flows.cli:app``). Each verb
group lives in its own module and joins ``app`` here.

    servekit rollout status fraud
    servekit rollout shadow fraud 2 --reason "new features"
    servekit rollout canary fraud 2 --percent 5
    servekit rollout promote fraud
    servekit models list
    servekit models train-demo fraud --seed 7
    servekit models register fraud --file model.onnx
    servekit experiment report fraud
    servekit autoscale simulate --trace spike --out /tmp/sim
    servekit report drift fraud --window 1h --out reports/fraud
"""

from __future__ import annotations

import typer

from flows.cli.autoscale import autoscale_app
from flows.cli.experiment import experiment_app
from flows.cli.models import models_app
from flows.cli.report import report_app
from flows.cli.rollout import rollout_app

app = typer.Typer(name="servekit", help="servekit: model serving on BentoML.", no_args_is_help=True)
app.add_typer(models_app, name="models", no_args_is_help=True)
app.add_typer(rollout_app, name="rollout", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment", no_args_is_help=True)
app.add_typer(report_app, name="report", no_args_is_help=True)
app.add_typer(autoscale_app, name="autoscale", no_args_is_help=True)

__all__ = ["app"]
