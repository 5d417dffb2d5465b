"""Expected outputs in README comments and the check of actual outputs against them."""

from __future__ import annotations

import pytest

from tests.readme.expect import (
    MORE,
    mismatch,
    parse_structure,
    python_expectations,
    shell_expectations,
    unmet,
)

ANSWER = (
    '{"model":"fraud","version":"1","predictions":[{"label":"fraud","probabilities":'
    '{"legit":0.010071,"fraud":0.989929},"cached":false}],"request_id":"ab12",'
    '"variant":"primary","assignment":"user"}'
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": 1, "b": "..."}', {"a": 1, "b": "..."}),
        ("{'label': 'fraud', ...}", {"label": "fraud", MORE: 0}),
        ('{"history": [...]}', {"history": [MORE]}),
        ("[[0.0101 0.9899]]", [[0.0101, 0.9899]]),
        ("[[ 0.5  1.  ]\n [-2.5e-03 3. ]]", [[0.5, 1.0], [-0.0025, 3.0]]),
        ("[{'name': 'features', 'shape': [-1, 7]}]", [{"name": "features", "shape": [-1, 7]}]),
        ("features FP32 [-1, 7]", None),
        ("the state and its latest changes", None),
        ("[not a structure", None),
        ("42", None),
    ],
)
def test_parse_structure(text: str, value: object) -> None:
    assert parse_structure(text) == value


def test_mismatch_checks_the_essential_part() -> None:
    import json

    actual = json.loads(ANSWER)
    shown = parse_structure(ANSWER.replace('"ab12"', '"..."').replace("0.010071", "0.04"))
    assert mismatch(shown, actual) is None  # floats within 0.05, any request id
    legit = {**actual, "predictions": [{**actual["predictions"][0], "label": "legit"}]}
    assert "predictions[0].label" in (mismatch(shown, legit) or "")
    flagged = {**actual, "predictions": [{**actual["predictions"][0], "features": {}}]}
    assert "unexpected ['features']" in (mismatch(shown, flagged) or "")
    unrouted = {k: v for k, v in actual.items() if k != "variant"}
    assert "lacks ['variant']" in (mismatch(shown, unrouted) or "")
    assert mismatch({"version": "2", MORE: 0}, {"version": "2", "stage": "staging"}) is None
    assert mismatch({"version": "2"}, {"version": 2}) is not None  # a string is not an int
    assert mismatch([-1, 7], [-1, 4]) is not None  # shapes exactly
    assert mismatch([[0.0101, 0.9899]], [[0.0101, 0.9899, 0.0]]) is not None
    assert mismatch([[0.0101, 0.9899]], [[0.2, 0.8]]) is not None
    assert mismatch([1, MORE], [1, 2, 3]) is None
    assert mismatch("fraud-2-...", "fraud-2-1a019641") is None
    assert mismatch(True, 1) is not None


def test_python_expectations_follow_prints_only() -> None:
    code = (
        "x = compute()  # [1, 2]\n"
        "print(x)  # [[0.0101 0.9899]]\n"
        "print(\n    x\n)  # {'a': 1, ...}\n"
        "print(meta)\n"
        "# [{'name': 'features'}]\n"
        "# [3]\n"
        "print(y)  # prose about y\n"
    )
    got = [(e.line, e.value) for e in python_expectations(code)]
    assert got == [(2, [[0.0101, 0.9899]]), (5, {"a": 1, MORE: 0}), (7, [{"name": "features"}])]


def test_shell_expectations_are_comment_lines() -> None:
    code = 'make serve   # venv, install [x]\ncurl localhost:3000/models\n# {"models": [...]}\n'
    assert [(e.line, e.value) for e in shell_expectations(code)] == [(3, {"models": [MORE]})]


def test_unmet_names_the_expectation() -> None:
    expectations = python_expectations("print(p)  # [[0.0101 0.9899]]\n")
    assert unmet(expectations, "loading\n[[0.01007098 0.989929  ]]\n") == []
    failures = unmet(expectations, "[[0.0499 0.9501 0.0]]\n")
    assert len(failures) == 1 and "block line 1: expected [[0.0101 0.9899]]" in failures[0]
    assert "no structured output" in unmet(expectations, "nothing\n")[0]
