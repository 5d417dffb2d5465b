"""The conversion's entry points: the deployable ``convert`` flow and the command line."""

from __future__ import annotations

import pytest

import flows.convert
from flows.convert import convert, main
from services.errors import InvalidInputError


def test_deployable_convert_flow_refuses_unknown_models() -> None:
    with pytest.raises(InvalidInputError) as err:
        convert(model="nope")
    assert err.value.field == "model"


def test_deployable_convert_flow_refuses_unknown_stages() -> None:
    with pytest.raises(InvalidInputError) as err:
        convert(model="text-embed", stage="archived")
    assert err.value.field == "stage"


def test_command_line_names_the_model_it_builds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nope"]) == 2
    err = capsys.readouterr().err
    assert "usage: python -m flows.convert" in err and "text-embed" in err


def test_command_line_help_explains_itself(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "ONNX" in out and "text-embed" in out and "SERVEKIT_MODEL_STORE" in out


def test_the_conversion_is_importable_from_flows_convert() -> None:
    for name in flows.convert.__all__:
        assert getattr(flows.convert, name) is not None
