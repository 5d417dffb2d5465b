"""Turning request records into the model's tensor, and model outputs into predictions.

``RecordEncoder`` validates records against a tabular schema and assembles one float32 row
per record, in field order, naming the field at fault when a record is wrong.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from services.errors import InvalidInputError
from services.registry.schema import FieldSpec, ModelSchema


class RecordEncoder:
    """Validates request records and encodes them as a float32 matrix.

    Categories are encoded as their index in the declared list, booleans as 0/1.
    Unknown fields, missing required fields, wrong types, NaN or infinity and values out
    of range raise ``InvalidInputError`` with the field's path, e.g. ``inputs[3].amount``.
    """

    def __init__(self, schema: ModelSchema) -> None:
        self.schema = schema
        self.fields = [f for f in schema.fields if f.source == "request"]
        self.names = [f.name for f in self.fields]
        self._known = frozenset(self.names)
        self._cat_index = {
            f.name: {c: float(i) for i, c in enumerate(f.categories or [])} for f in self.fields
        }
        self._defaults = {f.name: self._encode_default(f) for f in self.fields if not f.required}

    def _encode_default(self, f: FieldSpec) -> float:
        if f.default is None:
            return math.nan if f.dtype in ("float", "int") else 0.0
        if f.dtype == "category":
            return self._cat_index[f.name][str(f.default)]
        return float(f.default)

    def encode(self, records: list[Any], *, ignore: frozenset[str] = frozenset()) -> np.ndarray:
        """Encode ``records`` into a ``[len(records), n_fields]`` float32 array.

        Args:
            records: the request's records (dicts).
            ignore: extra keys allowed in a record without being model inputs (e.g. user_id).
        """
        out = np.empty((len(records), len(self.fields)), dtype=np.float32)
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise InvalidInputError(
                    f"inputs[{i}] must be an object of fields, got {_typename(rec)}",
                    field=f"inputs[{i}]",
                )
            extra = rec.keys() - self._known - ignore
            if extra:
                name = sorted(extra)[0]
                raise InvalidInputError(
                    f"inputs[{i}].{name} is not a field of this model (fields: {', '.join(self.names)})",
                    field=f"inputs[{i}].{name}",
                )
            for j, f in enumerate(self.fields):
                value = rec.get(f.name)
                if value is None:
                    if f.required:
                        raise InvalidInputError(
                            f"inputs[{i}].{f.name} is required", field=f"inputs[{i}].{f.name}"
                        )
                    out[i, j] = self._defaults[f.name]
                    continue
                out[i, j] = self._encode_value(f, value, i)
        return out

    def _encode_value(self, f: FieldSpec, value: Any, i: int) -> float:
        path = f"inputs[{i}].{f.name}"
        if f.dtype == "category":
            if not isinstance(value, str):
                raise InvalidInputError(
                    f"{path} must be a string, got {_typename(value)}", field=path
                )
            try:
                return self._cat_index[f.name][value]
            except KeyError:
                raise InvalidInputError(
                    f"{path}={value!r} is not one of {f.categories}", field=path
                ) from None
        if f.dtype == "bool":
            if not isinstance(value, bool):
                raise InvalidInputError(
                    f"{path} must be a boolean, got {_typename(value)}", field=path
                )
            return 1.0 if value else 0.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInputError(f"{path} must be a number, got {_typename(value)}", field=path)
        if f.dtype == "int" and isinstance(value, float) and not value.is_integer():
            raise InvalidInputError(f"{path} must be an integer, got {value!r}", field=path)
        x = float(value)
        if not math.isfinite(x):
            raise InvalidInputError(f"{path} must be finite, got {value!r}", field=path)
        if f.min is not None and x < f.min:
            raise InvalidInputError(f"{path}={value!r} is below the minimum {f.min}", field=path)
        if f.max is not None and x > f.max:
            raise InvalidInputError(f"{path}={value!r} is above the maximum {f.max}", field=path)
        return x


def decode_predictions(schema: ModelSchema, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Turn backend outputs into one JSON-ready prediction per row.

    Classifiers give ``{"label", "probabilities": {label: p}}``; other models give each
    output tensor's row as a list.
    """
    if schema.probability_output and schema.labels:
        probs = outputs[schema.probability_output]
        labels = schema.labels
        best = probs.argmax(axis=1)
        return [
            {
                "label": labels[int(k)],
                "probabilities": {
                    lab: round(float(p), 6) for lab, p in zip(labels, row, strict=True)
                },
            }
            for k, row in zip(best, probs, strict=True)
        ]
    names = [o.name for o in schema.outputs]
    n = len(next(iter(outputs.values())))
    return [{name: outputs[name][i].tolist() for name in names} for i in range(n)]


def _typename(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )
