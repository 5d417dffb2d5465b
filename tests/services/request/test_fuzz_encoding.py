"""Hypothesis on the record validation: any JSON records give a matrix or a 422."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.recipes.demo_models import FRAUD_SCHEMA
from services.errors import InvalidInputError
from services.request.encoding import RecordEncoder

ENCODER = RecordEncoder(FRAUD_SCHEMA)
FIELDS = [f.name for f in ENCODER.fields]
FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["grocery", "online", "travel", "pos"])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
records = (
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), values, max_size=len(FIELDS) + 2)
    | values
)


@FAST
@given(st.lists(records, min_size=1, max_size=5))
def test_records_encode_or_name_the_field_at_fault(batch: list[Any]) -> None:
    try:
        x = ENCODER.encode(batch)
    except InvalidInputError as exc:
        field = exc.context["field"]
        assert isinstance(field, str) and field.startswith("inputs[")
        return
    assert x.shape == (len(batch), len(FIELDS)) and x.dtype == np.float32
    assert not np.isinf(x).any()
