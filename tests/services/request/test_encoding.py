"""Record validation and encoding against a model's input schema."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flows.recipes.demo_models import FRAUD_SCHEMA
from services.errors import InvalidInputError
from services.request.encoding import RecordEncoder, decode_predictions

GOOD = {"amount": 12.5, "merchant_category": "grocery", "hour": 3, "channel": "online"}


@pytest.fixture
def encoder() -> RecordEncoder:
    return RecordEncoder(FRAUD_SCHEMA)


def test_encodes_in_field_order_with_category_indices(encoder: RecordEncoder) -> None:
    x = encoder.encode([GOOD, {**GOOD, "merchant_category": "crypto", "channel": "atm"}])
    assert x.dtype == np.float32
    assert x.tolist() == [[12.5, 0.0, 3.0, 1.0], [12.5, 7.0, 3.0, 2.0]]


def test_integral_float_is_accepted_for_int_field(encoder: RecordEncoder) -> None:
    assert encoder.encode([{**GOOD, "hour": 3.0}])[0, 2] == 3.0


@pytest.mark.parametrize(
    ("record", "field", "words"),
    [
        ({k: v for k, v in GOOD.items() if k != "amount"}, "inputs[0].amount", "required"),
        ({**GOOD, "colour": "red"}, "inputs[0].colour", "not a field"),
        ({**GOOD, "amount": "12"}, "inputs[0].amount", "must be a number"),
        ({**GOOD, "amount": True}, "inputs[0].amount", "must be a number"),
        ({**GOOD, "amount": math.nan}, "inputs[0].amount", "finite"),
        ({**GOOD, "amount": math.inf}, "inputs[0].amount", "finite"),
        ({**GOOD, "amount": -1}, "inputs[0].amount", "below the minimum"),
        ({**GOOD, "hour": 24}, "inputs[0].hour", "above the maximum"),
        ({**GOOD, "hour": 3.5}, "inputs[0].hour", "integer"),
        ({**GOOD, "merchant_category": "casino"}, "inputs[0].merchant_category", "not one of"),
        ({**GOOD, "channel": 1}, "inputs[0].channel", "must be a string"),
        ({**GOOD, "amount": None}, "inputs[0].amount", "required"),
    ],
)
def test_bad_records_name_the_field(
    encoder: RecordEncoder, record: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(InvalidInputError) as err:
        encoder.encode([record])
    assert err.value.field == field
    assert words in err.value.message


def test_second_record_is_named(encoder: RecordEncoder) -> None:
    with pytest.raises(InvalidInputError) as err:
        encoder.encode([GOOD, "not a record"])
    assert err.value.field == "inputs[1]"


def test_entity_fields_may_be_ignored(encoder: RecordEncoder) -> None:
    x = encoder.encode([{**GOOD, "user_id": "u1"}], ignore=frozenset({"user_id"}))
    assert x.shape == (1, 4)


def test_decode_classifier_predictions() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    preds = decode_predictions(FRAUD_SCHEMA, {"label": np.array([0, 1]), "probabilities": probs})
    assert [p["label"] for p in preds] == ["legit", "fraud"]
    assert preds[1]["probabilities"]["fraud"] == pytest.approx(0.8)
