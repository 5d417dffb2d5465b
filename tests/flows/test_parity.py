"""Parity measures of a converted model against its native original."""

from __future__ import annotations

import numpy as np
import pytest

from flows.parity import compare


def test_compare_errors_and_agreement() -> None:
    ref = {"p": np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]], dtype=np.float32)}
    out = {"p": ref["p"] + np.float32(2e-5)}
    ok = compare(
        "fp32", ref, out, task="classifier", tolerance=1e-4, min_agreement=1.0, primary="p"
    )
    assert ok.passed and ok.agreement == 1.0 and ok.max_abs_err == pytest.approx(2e-5, rel=1e-2)
    flipped = {"p": np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]], dtype=np.float32)}
    bad = compare(
        "fp16", ref, flipped, task="classifier", tolerance=0.5, min_agreement=0.9, primary="p"
    )
    assert not bad.passed and bad.agreement == pytest.approx(2 / 3)
    assert "agreement" in bad.reason()
    nan = {"p": np.full((3, 2), np.nan, dtype=np.float32)}
    assert not compare(
        "fp32", ref, nan, task="regressor", tolerance=1, min_agreement=0, primary="p"
    ).passed


def test_compare_embeddings_uses_retrieval_agreement_and_cosine() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(20, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    res = compare(
        "fp16",
        {"e": emb},
        {"e": emb + 1e-4},
        task="embedding",
        tolerance=1e-2,
        min_agreement=0.995,
        primary="e",
    )
    assert res.passed and res.agreement == 1.0 and res.min_cosine is not None
    assert res.min_cosine > 0.9999


def test_the_worst_output_is_named_and_regressors_have_no_agreement() -> None:
    ref = {"a": np.zeros((4, 2)), "b": np.full((4, 1), 10.0)}
    out = {"a": np.full((4, 2), 0.01), "b": np.full((4, 1), 10.5)}
    res = compare("fp16", ref, out, task="regressor", tolerance=0.02, min_agreement=1, primary="a")
    assert res.worst_output == "b" and res.max_scaled_err == pytest.approx(0.05)
    assert res.agreement is None and res.min_cosine is None
    assert not res.passed and "on 'b' over 0.02" in res.reason()


def test_missing_or_reshaped_outputs_are_errors() -> None:
    ref = {"y": np.zeros((3, 2))}
    with pytest.raises(KeyError, match="no output 'y'"):
        compare("fp32", ref, {}, task="regressor", tolerance=1, min_agreement=0, primary="y")
    with pytest.raises(ValueError, match="shape"):
        compare(
            "fp32", ref, {"y": np.zeros((3, 3))}, task="regressor", tolerance=1, min_agreement=0,
            primary="y",
        )  # fmt: skip
