"""The serving benchmark's inputs: every run gets bodies no earlier run sent (so the
prediction cache cannot hit on replays), in the form each side takes."""

from __future__ import annotations

import orjson

from benchmarks.serving import PEER, FreshInputs


def test_runs_never_repeat_inputs() -> None:
    inputs = FreshInputs("fraud", seed=5)
    first, second = inputs.take(3000, "colocated, lean"), inputs.take(3000, "colocated, lean")
    records = [orjson.dumps(orjson.loads(b)["inputs"][0]) for b in first + second]
    assert len(set(first + second)) == 6000
    assert len(set(records)) > 5990  # the generator's rare exact repeats aside
    again = FreshInputs("fraud", seed=6).take(3000, "colocated, lean")
    assert len(set(first) & set(again)) < 10  # another seed, other inputs


def test_the_peer_gets_feature_vectors_and_text_runs_get_texts() -> None:
    (peer,) = FreshInputs("fraud", seed=5).take(1, PEER)
    vector = orjson.loads(peer)["features"]
    assert len(vector) == 1 and len(vector[0]) == 7
    texts = FreshInputs("text-embed", seed=9).take(500, "split (depends), lean")
    bodies = [orjson.loads(b) for b in texts]
    assert {b["model"] for b in bodies} == {"text-embed"}
    assert len({b["inputs"][0]["text"] for b in bodies}) == 500
