"""Flow parameters as users type them: ``prefect deployment run ... -p candidate=2``.

Prefect's CLI parses ``-p candidate=2`` as the JSON number 2 and the server checks the
parameters against the deployment's parameter schema (the flow's signature) before the
run is created; the flow then validates them again when it starts.
"""

from __future__ import annotations

from typing import Any

import pytest
from prefect.utilities.callables import parameter_schema

from flows.canary import canary_promotion
from flows.parameters import version_text
from flows.rollout import rollout
from flows.shadow import shadow_validation

try:  # where Prefect 3 keeps the check the server runs on a deployment run's parameters
    from prefect._internal.schemas.validators import validate_values_conform_to_schema
except ImportError:  # pragma: no cover - moved in another Prefect 3 release
    from prefect.utilities.schema_tools import validate as _validate

    def validate_values_conform_to_schema(values: Any, schema: Any) -> None:
        _validate(values, schema, raise_on_error=True)


ROLLOUT_FLOWS = [rollout, shadow_validation, canary_promotion]


@pytest.mark.parametrize("flow", ROLLOUT_FLOWS, ids=lambda f: f.name)
@pytest.mark.parametrize("candidate", [2, "2"])
def test_candidate_accepts_what_users_type(flow: Any, candidate: Any) -> None:
    schema = parameter_schema(flow).model_dump_for_openapi()
    validate_values_conform_to_schema({"model": "fraud", "candidate": candidate}, schema)
    validated = flow.validate_parameters({"model": "fraud", "candidate": candidate})
    assert version_text(validated["candidate"]) == "2"


@pytest.mark.parametrize("flow", ROLLOUT_FLOWS, ids=lambda f: f.name)
def test_a_wrong_type_is_still_refused(flow: Any) -> None:
    schema = parameter_schema(flow).model_dump_for_openapi()
    with pytest.raises(ValueError, match="candidate"):
        validate_values_conform_to_schema({"model": "fraud", "candidate": [2]}, schema)


@pytest.mark.parametrize("flow", ROLLOUT_FLOWS, ids=lambda f: f.name)
def test_every_parameter_has_a_description(flow: Any) -> None:
    properties = parameter_schema(flow).model_dump_for_openapi()["properties"]
    missing = [name for name, prop in properties.items() if not prop.get("description")]
    assert not missing, f"{flow.name}: no description for {missing}"


def test_rollout_profile_is_a_choice() -> None:
    schema = parameter_schema(rollout).model_dump_for_openapi()
    validate_values_conform_to_schema({"model": "fraud", "candidate": 2, "profile": "demo"}, schema)
    with pytest.raises(ValueError, match="profile"):
        validate_values_conform_to_schema(
            {"model": "fraud", "candidate": 2, "profile": "fast"}, schema
        )


def test_version_text() -> None:
    assert version_text(2) == "2" and version_text(" 3 ") == "3"
