"""Model input/output schemas: the metadata every registered version carries.

A tabular model declares its request fields (name, dtype, required, range or categories,
and where a field comes from: the request or a feature view); tensor schemas describe the
backend's own inputs and outputs with Open Inference Protocol datatypes. The request path
validates and encodes records against them (``services.request.encoding``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

FieldType = Literal["float", "int", "category", "bool"]

# Open Inference Protocol datatypes and their numpy equivalents.
OIP_TO_NUMPY: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
NUMPY_TO_OIP: dict[Any, str] = {np.dtype(v): k for k, v in OIP_TO_NUMPY.items()}


class FieldSpec(BaseModel):
    """One field of a request record."""

    name: str
    dtype: FieldType
    required: bool = True
    default: float | int | str | bool | None = None
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    source: str = Field(
        "request",
        description='"request", or "feature:<view>.<feature>" for a feature-store value.',
    )
    description: str | None = None

    @model_validator(mode="after")
    def _check(self) -> FieldSpec:
        if self.dtype == "category" and not self.categories:
            raise ValueError(f"field {self.name!r}: a category field needs categories")
        return self


class TensorSpec(BaseModel):
    """A backend tensor: name, OIP datatype and shape (-1 for a dynamic axis)."""

    name: str
    datatype: str
    shape: list[int]


class ModelSchema(BaseModel):
    """What a model takes and gives.

    Attributes:
        kind: "tabular" (records of typed fields), "text" or "tensor" (raw tensors only).
        fields: request record fields, in feature-vector order (tabular).
        inputs: the backend's input tensors.
        outputs: the backend's output tensors.
        labels: class names, index-aligned with the probability output (classifiers).
        probability_output: the output tensor holding class probabilities.
    """

    kind: Literal["tabular", "text", "tensor"] = "tabular"
    fields: list[FieldSpec] = Field(default_factory=list)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str] | None = None
    probability_output: str | None = None
    entities: dict[str, str] = Field(
        default_factory=dict,
        description='Entity type -> the record key naming it, for feature lookups, e.g. {"user": "user_id"}.',
    )

    def public(self) -> dict[str, Any]:
        """The schema as shown by ``GET /models``."""
        return self.model_dump(exclude_none=True)
