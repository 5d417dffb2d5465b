"""Which version serves a request: sticky, salted hashing of users (or requests).

User-level assignment (docs/design.md): a logged-in user is hashed by ``user_id`` so they always see the same
version for the life of an experiment; anonymous traffic falls back to the request id (or
a random draw when there is none). The hash is ``blake2b`` of ``"{salt}:{unit_id}"``, read
big-endian, so every replica and every Python process agrees (``hash()`` is salted per
process and would not).

A unit goes to the candidate when its bucket is below ``percent * 100`` of 10,000 buckets,
so raising a canary from 5 % to 25 % keeps everyone already on the candidate there.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from services.rollout.transitions import RolloutState

Variant = Literal["primary", "candidate"]
Unit = Literal["user", "request"]

BUCKETS = 10_000
"""Buckets of the split: a share resolves to 0.01 %."""

_ROUTED_MODES = frozenset({"canary", "ab"})


@dataclass(frozen=True, slots=True)
class Assignment:
    """The variant a request was routed to, and why.

    Attributes:
        variant: ``"primary"`` or ``"candidate"``.
        version: the model version that answers.
        unit: ``"user"`` when hashed by user id, ``"request"`` otherwise.
        bucket: the unit's bucket in ``[0, BUCKETS)``.
    """

    variant: Variant
    version: str
    unit: Unit
    bucket: int


def bucket(salt: str, unit_id: str, buckets: int = BUCKETS) -> int:
    """The stable bucket of ``unit_id`` under ``salt``, in ``[0, buckets)``."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    digest = hashlib.blake2b(f"{salt}:{unit_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def candidate_threshold(percent: float, buckets: int = BUCKETS) -> float:
    """Buckets below this value go to the candidate (``percent`` of ``buckets``)."""
    return percent * buckets / 100.0


def assign(
    rollout_state: RolloutState,
    user_id: str | None,
    request_id: str | None,
    *,
    rng: random.Random | None = None,
) -> Assignment:
    """Route one request under ``rollout_state``.

    Only ``canary`` and ``ab`` modes send live traffic to the candidate; in ``shadow`` the
    primary answers and the caller mirrors the input to the candidate itself.

    Args:
        rollout_state: the model's rollout state (primary, candidate, mode, percent, salt).
        user_id: the caller's user id; sticky assignment when given.
        request_id: the request's id, hashed when there is no user id.
        rng: source of the random draw for requests with neither id (tests pass a seeded
            one); the module's generator otherwise.

    Returns:
        The assignment: variant, version, unit and bucket.
    """
    unit: Unit
    if user_id:
        unit, slot = "user", bucket(rollout_state.salt, user_id)
    elif request_id:
        unit, slot = "request", bucket(rollout_state.salt, request_id)
    else:
        unit, slot = "request", (rng or random).randrange(BUCKETS)

    candidate = rollout_state.candidate
    if (
        candidate is not None
        and rollout_state.mode in _ROUTED_MODES
        and slot < candidate_threshold(rollout_state.percent)
    ):
        return Assignment(variant="candidate", version=candidate, unit=unit, bucket=slot)
    return Assignment(variant="primary", version=rollout_state.primary, unit=unit, bucket=slot)
