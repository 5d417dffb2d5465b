"""The canary's drift gate input: each variant's predictions in a step, read incrementally.

During a rollout every prediction is written to the model's prediction stream with its
variant. ``StepDrift`` reads the stream from the step's start on each look and keeps each
variant's predicted labels and class probabilities, so the drift between them is judged
on the same window and the same traffic mix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from flows.prediction_drift import PredictionDrift, prediction_drift
from services.rollout.prediction_log import PredictionLog

_READ_CHUNK = 1000


def prediction_rows(output: Any) -> list[tuple[object, list[float] | None]]:
    """(label, class probabilities) of each row of a logged answer.

    Takes the gateway's answers (``[{"label", "probabilities": {label: p}}, ...]``) and
    raw classifier outputs (``{"label": [...], "probabilities": [[...]]}``); anything
    else has no rows.
    """
    if isinstance(output, list):
        rows: list[tuple[object, list[float] | None]] = []
        for pred in output:
            if not isinstance(pred, Mapping) or "label" not in pred:
                continue
            probs = pred.get("probabilities")
            values = (
                [float(probs[k]) for k in sorted(probs)] if isinstance(probs, Mapping) else None
            )
            rows.append((pred["label"], values))
        return rows
    if isinstance(output, Mapping) and "label" in output:
        labels = np.asarray(output["label"]).ravel().tolist()
        probs = output.get("probabilities")
        matrix = (
            np.asarray(probs, dtype=float).reshape(len(labels), -1) if probs is not None else None
        )
        return [
            (label, None if matrix is None else matrix[i].tolist())
            for i, label in enumerate(labels)
        ]
    return []


class StepDrift:
    """Each variant's predictions since ``since_id``, and their drift.

    A step observed in several intervals keeps one ``StepDrift`` across them; each
    interval passes the log of its own Redis connection to :meth:`update`. A run that
    resumes a step builds a new one from the step's start id and reads the step again.

    Args:
        log: the prediction log to read (None: the one given to the first update).
        model: the model rolled out.
        since_id: the stream id at the step's start.
    """

    def __init__(self, log: PredictionLog | None, model: str, since_id: str) -> None:
        self._log = log
        self._model = model
        self._cursor = since_id
        self._labels: dict[str, list[object]] = {"primary": [], "candidate": []}
        self._probs: dict[str, list[list[float]]] = {"primary": [], "candidate": []}

    async def update(self, log: PredictionLog | None = None) -> PredictionDrift:
        """Read what arrived since the last look; the drift over the whole step.

        A failed read changes nothing: the cursor moves only with the rows it read.
        """
        if log is not None:
            self._log = log
        if self._log is None:
            raise ValueError("StepDrift.update needs a prediction log")
        while True:
            batch = await self._log.read(self._model, self._cursor, _READ_CHUNK)
            if not batch:
                break
            self._cursor = batch[-1][0]
            for _, event in batch:
                if event.error or event.variant not in self._labels:
                    continue
                for label, probs in prediction_rows(event.output):
                    self._labels[event.variant].append(label)
                    if probs is not None:
                        self._probs[event.variant].append(probs)
        return self.drift()

    def drift(self) -> PredictionDrift:
        """The candidate's drift from the primary over what was read."""
        p, c = self._probs["primary"], self._probs["candidate"]
        have_probs = bool(p) and bool(c) and len(p[0]) == len(c[0])
        return prediction_drift(
            self._labels["primary"],
            self._labels["candidate"],
            np.asarray(p) if have_probs else None,
            np.asarray(c) if have_probs else None,
        )
