"""Parity of a converted model against its native original, on a held-out batch.

Per format, the largest absolute and relative error of every output, and agreement:
label (argmax) agreement for classifiers, top-1 retrieval agreement for embeddings (each
row's nearest neighbour among the batch is the same), none for regressors. A format
passes when every element satisfies ``|converted - native| <= tol * max(1, |native|)``
and agreement is at least ``min_agreement``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from services.errors import ServekitError

Task = Literal["classifier", "regressor", "embedding"]


class ParityError(ServekitError):
    """A converted model does not match its native original within tolerance."""

    def __init__(self, message: str, *, model: str, failures: list[ParityResult]) -> None:
        super().__init__(message, model=model, formats=[f.format for f in failures])
        self.model = model
        self.failures = failures


@dataclass
class ParityResult:
    """One format's parity on the held-out batch."""

    format: str
    rows: int
    max_abs_err: float
    max_rel_err: float
    max_scaled_err: float
    agreement: float | None
    tolerance: float
    min_agreement: float
    min_cosine: float | None = None
    passed: bool = False
    worst_output: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)

    def reason(self) -> str:
        """Why it failed (empty when it passed)."""
        parts = []
        if not self.max_scaled_err <= self.tolerance:
            parts.append(
                f"error {self.max_scaled_err:.3g} on {self.worst_output!r} over {self.tolerance:g}"
            )
        if self.agreement is not None and self.agreement < self.min_agreement:
            parts.append(f"agreement {self.agreement:.4f} under {self.min_agreement}")
        return "; ".join(parts)


def compare(
    fmt: str,
    native: dict[str, np.ndarray],
    converted: dict[str, np.ndarray],
    *,
    task: Task,
    tolerance: float,
    min_agreement: float,
    primary: str,
) -> ParityResult:
    """Compare a format's outputs with the native model's on the same batch.

    Args:
        fmt: the format's name ("fp32", "fp16", "int8", "tensorrt").
        native: the native model's outputs, by output name.
        converted: the converted model's outputs for the same feeds.
        task: what the primary output is, for the agreement measure.
        tolerance: most scaled error per element.
        min_agreement: least agreement.
        primary: the output agreement is measured on (probabilities, embedding, ...).
    """
    max_abs, max_rel, worst_scaled, worst = _errors(native, converted)
    ref = native[primary]
    agreement, min_cos = _agreement(task, ref, converted[primary])
    passed = worst_scaled <= tolerance and (agreement is None or agreement >= min_agreement)
    return ParityResult(
        format=fmt,
        rows=len(ref),
        max_abs_err=max_abs,
        max_rel_err=max_rel,
        max_scaled_err=worst_scaled,
        agreement=agreement,
        tolerance=tolerance,
        min_agreement=min_agreement,
        min_cosine=min_cos,
        passed=passed,
        worst_output=worst,
    )


def _errors(
    native: dict[str, np.ndarray], converted: dict[str, np.ndarray]
) -> tuple[float, float, float, str]:
    """Largest absolute, relative and scaled error over every output, and the worst output.

    A non-finite converted value is an infinite error.
    """
    max_abs = max_rel = worst_scaled = 0.0
    worst = ""
    for name, ref in native.items():
        if name not in converted:
            raise KeyError(f"the converted model has no output {name!r}")
        a = np.asarray(converted[name], dtype=np.float64)
        b = np.asarray(ref, dtype=np.float64)
        if a.shape != b.shape:
            raise ValueError(f"output {name!r}: shape {a.shape} != native {b.shape}")
        diff = np.abs(a - b)
        if not np.all(np.isfinite(a)):
            diff = np.where(np.isfinite(a), diff, np.inf)
        scaled = float((diff / np.maximum(1.0, np.abs(b))).max(initial=0.0))
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
        # Relative to the reference's own magnitude, floored so exact zeros do not explode.
        max_rel = max(max_rel, float((diff / np.maximum(np.abs(b), 1e-3)).max(initial=0.0)))
        if scaled >= worst_scaled:
            worst_scaled, worst = scaled, name
    return max_abs, max_rel, worst_scaled, worst


def _agreement(task: Task, ref: np.ndarray, out: np.ndarray) -> tuple[float | None, float | None]:
    """(agreement, least cosine): label agreement for classifiers; retrieval agreement and
    cosine for embeddings; neither for regressors."""
    if task == "classifier":
        ref_label = ref.argmax(axis=1) if ref.ndim == 2 else ref
        out_label = out.argmax(axis=1) if out.ndim == 2 else out
        return float(np.mean(ref_label == out_label)), None
    if task == "embedding":
        return _retrieval_agreement(ref, out), float(_cosine(ref, out).min())
    return None, None


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na, 1e-12)


def _retrieval_agreement(ref: np.ndarray, out: np.ndarray) -> float:
    """Share of rows whose nearest other row (by cosine) is the same in both."""
    if len(ref) < 3:
        return 1.0

    def nearest(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(axis=1)

    return float(np.mean(nearest(ref) == nearest(out)))
