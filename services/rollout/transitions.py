"""Rollout state and its transitions: what one model's rollout state holds, and how each
action changes it.

Modes: ``off`` (primary only), ``shadow`` (primary answers, candidate gets a mirrored copy),
``canary`` (``percent`` of live traffic to the candidate), ``ab`` (an experiment with a
fresh salt and experiment id at ``percent``).

Each action is a :data:`Change`: a pure function from the current state (None: none yet)
and the time now to the new state, raising a ServekitError to refuse. ``RolloutStore``
applies changes atomically in Redis and retries them on a concurrent write, so a change
must be free of side effects.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.errors import ConflictError, InvalidInputError, NotFoundError

Mode = Literal["off", "shadow", "canary", "ab"]


def check_model_name(model: str) -> None:
    """Raise InvalidInputError unless ``model`` is a usable name (1..200 characters)."""
    if not model or len(model) > 200:
        raise InvalidInputError("model name must be 1..200 characters", field="model")


class RolloutState(BaseModel):
    """One model's rollout state, as stored in Redis and held by every replica.

    Attributes:
        model: the model's name.
        primary: the version that answers by default.
        candidate: the version under rollout, or None.
        mode: ``off``, ``shadow``, ``canary`` or ``ab``.
        percent: share of live traffic to the candidate, 0..100 (0 unless canary or ab).
        experiment_id: id of the canary or A/B experiment that feedback is counted under.
        salt: salt of the assignment hash; new per rollout and per A/B experiment.
        started_at: when the current rollout began (None when there is none).
        updated_at: when the state last changed.
        revision: increases by one on every change.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    model: str
    primary: str = Field(min_length=1)
    candidate: str | None = None
    mode: Mode = "off"
    percent: float = Field(0.0, ge=0.0, le=100.0)
    experiment_id: str | None = None
    salt: str = ""
    started_at: float | None = None
    updated_at: float = 0.0
    revision: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _coherent(self) -> RolloutState:
        if self.candidate is not None and self.candidate == self.primary:
            raise ValueError("candidate must differ from primary")
        if self.mode != "off" and self.candidate is None:
            raise ValueError(f"mode {self.mode!r} needs a candidate")
        if self.mode in ("off", "shadow") and self.percent != 0:
            raise ValueError(f"mode {self.mode!r} sends no live traffic: percent must be 0")
        return self


Change = Callable[[RolloutState | None, float], RolloutState]
"""Computes the new state from the current one (None: no state yet) and the time now."""


def validated(state: RolloutState | None, **changes: Any) -> RolloutState:
    """``state`` with ``changes``, validated; a bad value names its field."""
    base = state.model_dump() if state is not None else {}
    try:
        return RolloutState.model_validate({**base, **changes})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else None
        raise InvalidInputError(f"invalid rollout state: {first['msg']}", field=field) from exc


def _check_percent(percent: float, *, allow_zero: bool = False) -> None:
    low_ok = percent >= 0 if allow_zero else percent > 0
    if not (low_ok and percent <= 100):
        bound = "0..100" if allow_zero else "(0, 100]"
        raise InvalidInputError(f"percent must be in {bound}, got {percent}", field="percent")


def _check_candidate(state: RolloutState, candidate: str) -> None:
    if not candidate:
        raise InvalidInputError("candidate must not be empty", field="candidate")
    if candidate == state.primary:
        raise InvalidInputError(
            f"candidate {candidate!r} is already the primary of {state.model!r}", field="candidate"
        )
    if state.candidate is not None and state.candidate != candidate:
        raise _in_progress(state)


def _in_progress(state: RolloutState) -> ConflictError:
    return ConflictError(
        f"a rollout of {state.candidate!r} is in progress for {state.model!r}; "
        "promote or roll it back first",
        model=state.model,
        candidate=state.candidate,
    )


def existing(state: RolloutState | None, model: str) -> RolloutState:
    """``state``; NotFoundError when ``model`` has none yet."""
    if state is None:
        raise NotFoundError(
            f"no rollout state for model {model!r}; set its primary first", model=model
        )
    return state


def served_stage(version: str, registry_stage: str, state: RolloutState | None) -> str:
    """The stage a version shows (``GET /models``, ``servekit models list``).

    The rollout state decides what serves, whoever changed it (admin API, CLI or a
    flow), so its primary reads production and a registry production version it replaced
    reads archived; without a state, the registry's stage.
    """
    if state is None:
        return registry_stage
    if version == state.primary:
        return "production"
    return "archived" if registry_stage == "production" else registry_stage


def _new_salt() -> str:
    return secrets.token_hex(8)


def _new_experiment_id(model: str, candidate: str) -> str:
    return f"{model}-{candidate}-{uuid.uuid4().hex[:8]}"


def _ended(state: RolloutState, *, primary: str) -> RolloutState:
    return validated(
        state,
        primary=primary,
        candidate=None,
        mode="off",
        percent=0.0,
        experiment_id=None,
        started_at=None,
    )


# --------------------------------------------------------------------------- actions


def set_primary(model: str, version: str) -> Change:
    """Create ``model``'s state, or replace its primary while no rollout runs."""

    def change(state: RolloutState | None, now: float) -> RolloutState:
        if not version:
            raise InvalidInputError("version must not be empty", field="primary")
        if state is None:
            return validated(None, model=model, primary=version, salt=_new_salt())
        if state.candidate is not None:
            raise _in_progress(state)
        return validated(state, primary=version)

    return change


def shadow(model: str, candidate: str) -> Change:
    """Mirror traffic to ``candidate``; the primary keeps answering every request."""

    def change(state: RolloutState | None, now: float) -> RolloutState:
        state = existing(state, model)
        _check_candidate(state, candidate)
        fresh = state.candidate is None
        return validated(
            state,
            candidate=candidate,
            mode="shadow",
            percent=0.0,
            salt=_new_salt() if fresh else state.salt,
            started_at=now if fresh else state.started_at,
        )

    return change


def canary(model: str, candidate: str, percent: float) -> Change:
    """Send ``percent`` of live traffic to ``candidate`` (sticky per user)."""
    _check_percent(percent)

    def change(state: RolloutState | None, now: float) -> RolloutState:
        state = existing(state, model)
        _check_candidate(state, candidate)
        fresh = state.candidate is None
        continuing = state.mode == "canary" and state.experiment_id is not None
        return validated(
            state,
            candidate=candidate,
            mode="canary",
            percent=percent,
            salt=_new_salt() if fresh else state.salt,
            started_at=now if fresh else state.started_at,
            experiment_id=(
                state.experiment_id if continuing else _new_experiment_id(model, candidate)
            ),
        )

    return change


def set_percent(model: str, percent: float) -> Change:
    """Change the candidate's share of a running canary or A/B test (same salt)."""
    _check_percent(percent, allow_zero=True)

    def change(state: RolloutState | None, now: float) -> RolloutState:
        state = existing(state, model)
        if state.mode not in ("canary", "ab"):
            raise InvalidInputError(
                f"{model!r} is in mode {state.mode!r}; percent applies to canary or ab",
                field="mode",
            )
        return validated(state, percent=percent)

    return change


def ab(model: str, candidate: str, percent: float, experiment_id: str | None = None) -> Change:
    """Start an A/B experiment: fresh salt and experiment id, ``percent`` to candidate.

    The salt is new even when coming from a canary, so the experiment's groups are a
    fresh randomization rather than the canary's (already exposed) users.
    """
    _check_percent(percent)

    def change(state: RolloutState | None, now: float) -> RolloutState:
        state = existing(state, model)
        _check_candidate(state, candidate)
        return validated(
            state,
            candidate=candidate,
            mode="ab",
            percent=percent,
            salt=_new_salt(),
            started_at=now if state.candidate is None else state.started_at,
            experiment_id=experiment_id or _new_experiment_id(model, candidate),
        )

    return change


def promote(model: str) -> Change:
    """Make the candidate the primary and end the rollout."""

    def change(state: RolloutState | None, now: float) -> RolloutState:
        state = existing(state, model)
        if state.candidate is None:
            raise InvalidInputError(f"{model!r} has no candidate to promote", field="candidate")
        return _ended(state, primary=state.candidate)

    return change


def rollback(model: str) -> Change:
    """Drop the candidate and end the rollout; the primary keeps serving."""

    def change(state: RolloutState | None, now: float) -> RolloutState:
        state = existing(state, model)
        if state.candidate is None:
            raise InvalidInputError(f"{model!r} has no candidate to roll back", field="candidate")
        return _ended(state, primary=state.primary)

    return change


class CanaryProgress(BaseModel):
    """How far a canary step has been watched, saved after every observation interval so
    that a restarted flow or a retried task resumes the step instead of starting over.

    Attributes:
        model, candidate: what is rolled out.
        experiment_id: the canary's experiment; progress of another one is stale.
        step: the step's number (1-based) in the canary's plan.
        percent: the step's candidate traffic share.
        since_id: the prediction stream id at the step's start (the drift gate reads on).
        start_count: candidate predictions counted in the experiment when the step began.
        observed_s: seconds of the step watched so far (time nobody watched is not counted).
        p_value: the mSPRT's running p-value so far.
        intervals: observation intervals saved so far.
        resumed: times a run took the step up from this saved progress.
        started_at: when the step began (epoch seconds).
        updated_at: when the progress was last saved.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    model: str
    candidate: str
    experiment_id: str
    step: int = Field(ge=1)
    percent: float = Field(gt=0.0, le=100.0)
    since_id: str = "0-0"
    start_count: int = Field(0, ge=0)
    observed_s: float = Field(0.0, ge=0.0)
    p_value: float = Field(1.0, ge=0.0, le=1.0)
    intervals: int = Field(0, ge=0)
    resumed: int = Field(0, ge=0)
    started_at: float = 0.0
    updated_at: float = 0.0

    def continues(self, state: RolloutState | None) -> bool:
        """Whether ``state`` is still the canary this progress belongs to."""
        return (
            state is not None
            and state.mode == "canary"
            and state.candidate == self.candidate
            and state.experiment_id == self.experiment_id
        )
