"""What a shadow pair logs of each side's outputs: the same tensors on both sides.

The gateway's primary answer holds only what the prediction cache keeps (a classifier's
probabilities); the candidate's runner returns every output of its graph. Both sides are
reduced to the same view before the pair is logged, so the shadow gate compares like
with like: for a classifier, the label the gateway answers (argmax of the probabilities)
and the probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from services.registry.versions import ModelVersion


def comparable_outputs(mv: ModelVersion, outputs: Any) -> Any:
    """What a shadow pair logs of one side's outputs, the same for primary and candidate.

    A classifier logs ``{"label": argmax index, "probabilities": rows}`` (the label the
    gateway answers with); other models log their outputs as they are.
    """
    name, schema = mv.model_schema.probability_output, mv.model_schema
    if not (name and schema.labels) or not isinstance(outputs, Mapping) or name not in outputs:
        return outputs
    probs = np.asarray(outputs[name], dtype=np.float32)
    return {"label": probs.argmax(axis=1), "probabilities": probs}


def like_primary(primary: Any, candidate: Any) -> Any:
    """The candidate's outputs restricted to the tensors the primary logged."""
    if isinstance(primary, Mapping) and isinstance(candidate, Mapping):
        return {k: candidate[k] for k in primary if k in candidate}
    return candidate
