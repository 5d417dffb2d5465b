"""The two tables a drift report compares: reference rows and live rows, column by column.

Columns, built the same way on both sides from the layouts of ``monitoring.reference``:

- input features: a tabular model's fields by name, categories decoded back to their
  names and booleans to ``true``/``false``; a text model's ``text_length`` (in tokens);
- predictions: a classifier's ``prediction`` (the label) and its class probabilities
  (``proba_<label>``; for two classes, the second one's only); a wide output such as an
  embedding, its norm (``<output>_norm``) and its first principal components fitted on
  the reference (``<output>_pc1`` ...); a narrow one, its values.

pandas is imported inside the functions: the gateway never loads this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from monitoring.reference import feature_names
from services.registry.schema import ModelSchema

if TYPE_CHECKING:
    import pandas as pd

WIDE_OUTPUT = 8
"""Outputs wider than this are summarized (norm and principal components)."""


@dataclass
class DriftFrames:
    """Reference and current tables with the same columns, and how to test each.

    Attributes:
        reference: the reference rows.
        current: the live rows.
        numerical: numerical columns.
        categorical: categorical columns.
        features: the input-feature columns (the drifted share counts these).
        predictions: the prediction columns.
        notes: columns left out, and why.
    """

    reference: pd.DataFrame
    current: pd.DataFrame
    numerical: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    predictions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _decode(schema: ModelSchema, name: str, values: np.ndarray) -> tuple[Any, bool]:
    """A feature column's values for the report, and whether it is categorical."""
    spec = next((f for f in schema.fields if f.name == name), None)
    if spec is None or spec.dtype in ("float", "int"):
        return values.astype(np.float64), False
    if spec.dtype == "bool":
        return np.where(values >= 0.5, "true", "false"), True
    names = list(spec.categories or [])
    index = values.astype(np.int64)
    known = (index >= 0) & (index < len(names)) & (index == values)
    return np.array(
        [names[i] if ok else "unknown" for i, ok in zip(index, known, strict=True)],
        dtype=object,
    ), True


def feature_columns(
    schema: ModelSchema,
    names: Sequence[str],
    reference: np.ndarray,
    current: np.ndarray | None,
    frames: DriftFrames,
) -> None:
    """Add the input-feature columns present on both sides to ``frames``."""
    if current is None or current.shape[1] != len(names):
        what = ", ".join(names) or "no features"
        if current is None:
            frames.notes.append(f"input features ({what}) are not in the prediction stream")
        else:
            frames.notes.append(
                f"logged rows have {current.shape[1]} features, the reference {len(names)}"
            )
        return
    for j, name in enumerate(names):
        ref_values, categorical = _decode(schema, name, reference[:, j])
        cur_values, _ = _decode(schema, name, current[:, j])
        _add(frames, name, ref_values, cur_values, categorical, prediction=False)


def _add(
    frames: DriftFrames,
    name: str,
    reference: Any,
    current: Any,
    categorical: bool,
    *,
    prediction: bool,
) -> None:
    frames.reference[name] = reference
    frames.current[name] = current
    (frames.categorical if categorical else frames.numerical).append(name)
    (frames.predictions if prediction else frames.features).append(name)


def principal_components(reference: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's mean and its first ``k`` principal axes (``[k, d]``), each axis's
    sign fixed so that its largest loading is positive (the same axes on every run)."""
    mean = reference.mean(axis=0)
    _, _, vt = np.linalg.svd(reference - mean, full_matrices=False)
    axes = vt[: min(k, len(vt))]
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    return mean, axes * np.where(signs == 0, 1.0, signs)[:, None]


def prediction_columns(
    schema: ModelSchema,
    reference: np.ndarray,
    current: np.ndarray,
    frames: DriftFrames,
    *,
    components: int,
) -> None:
    """Add the prediction columns (see the module's docstring) to ``frames``."""
    if reference.shape[1] != current.shape[1]:
        frames.notes.append(
            f"predictions have {current.shape[1]} values, the reference's {reference.shape[1]}"
        )
        return
    labels = schema.labels if schema.probability_output else None
    if labels:
        names = np.array(labels, dtype=object)
        ref_label, cur_label = names[reference.argmax(axis=1)], names[current.argmax(axis=1)]
        _add(frames, "prediction", ref_label, cur_label, True, prediction=True)
        shown = labels[1:] if len(labels) == 2 else labels
        for label in shown:
            j = labels.index(label)
            _add(frames, f"proba_{label}", reference[:, j], current[:, j], False, prediction=True)
        return
    output = schema.outputs[0].name
    if reference.shape[1] <= WIDE_OUTPUT:
        for j in range(reference.shape[1]):
            name = output if reference.shape[1] == 1 else f"{output}_{j}"
            _add(frames, name, reference[:, j], current[:, j], False, prediction=True)
        return
    ref64, cur64 = reference.astype(np.float64), current.astype(np.float64)
    norms = np.linalg.norm(ref64, axis=1), np.linalg.norm(cur64, axis=1)
    _add(frames, f"{output}_norm", norms[0], norms[1], False, prediction=True)
    mean, axes = principal_components(ref64, components)
    ref_pc, cur_pc = (ref64 - mean) @ axes.T, (cur64 - mean) @ axes.T
    for j in range(axes.shape[0]):
        _add(frames, f"{output}_pc{j + 1}", ref_pc[:, j], cur_pc[:, j], False, prediction=True)


def build_frames(
    schema: ModelSchema,
    names: Sequence[str],
    reference: tuple[np.ndarray, np.ndarray],
    current: tuple[np.ndarray | None, np.ndarray],
    *,
    components: int,
) -> DriftFrames:
    """The report's tables from ``(features, outputs)`` of the reference and the window;
    ``names`` are the reference's feature columns.

    A side's features may be None (not logged): the feature columns are then left out,
    with a note, and the predictions are still compared.
    """
    import pandas as pd

    frames = DriftFrames(pd.DataFrame(index=range(len(reference[1]))), pd.DataFrame())
    frames.current = pd.DataFrame(index=range(len(current[1])))
    feature_columns(schema, names, reference[0], current[0], frames)
    prediction_columns(schema, reference[1], current[1], frames, components=components)
    return frames


def current_frame(
    schema: ModelSchema, features: np.ndarray | None
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The live feature table alone, for a summary of a window that has no reference to
    compare with: ``(table, numerical columns, categorical columns)``."""
    import pandas as pd

    table = pd.DataFrame()
    numerical: list[str] = []
    categorical: list[str] = []
    if features is None:
        return table, numerical, categorical
    for j, name in enumerate(feature_names(schema, features.shape[1])):
        values, is_categorical = _decode(schema, name, features[:, j])
        table[name] = values
        (categorical if is_categorical else numerical).append(name)
    return table, numerical, categorical
