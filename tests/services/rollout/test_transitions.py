"""Rollout transitions as pure functions: each action's new state, or its refusal."""

from __future__ import annotations

import pytest

from services.errors import ConflictError, InvalidInputError, NotFoundError
from services.rollout import transitions
from services.rollout.transitions import RolloutState, check_model_name, validated

NOW = 1_700_000_000.0


def primary_only() -> RolloutState:
    return transitions.set_primary("fraud", "1")(None, NOW)


def test_set_primary_creates_a_state_with_a_salt_then_replaces_the_primary() -> None:
    state = primary_only()
    assert (state.model, state.primary, state.mode, state.candidate) == ("fraud", "1", "off", None)
    assert len(state.salt) == 16
    again = transitions.set_primary("fraud", "3")(state, NOW + 1)
    assert again.primary == "3" and again.salt == state.salt
    with pytest.raises(InvalidInputError) as info:
        transitions.set_primary("fraud", "")(state, NOW)
    assert info.value.field == "primary"


def test_actions_need_an_existing_state() -> None:
    for change in (
        transitions.shadow("fraud", "2"),
        transitions.canary("fraud", "2", 5.0),
        transitions.set_percent("fraud", 10.0),
        transitions.ab("fraud", "2", 50.0),
        transitions.promote("fraud"),
        transitions.rollback("fraud"),
    ):
        with pytest.raises(NotFoundError):
            change(None, NOW)


def test_shadow_then_canary_keeps_the_salt_and_start_and_names_an_experiment() -> None:
    shadowing = transitions.shadow("fraud", "2")(primary_only(), NOW)
    assert (shadowing.mode, shadowing.candidate, shadowing.percent) == ("shadow", "2", 0.0)
    assert shadowing.started_at == NOW and shadowing.experiment_id is None
    canary = transitions.canary("fraud", "2", 5.0)(shadowing, NOW + 10)
    assert (canary.mode, canary.percent, canary.salt) == ("canary", 5.0, shadowing.salt)
    assert canary.started_at == NOW and canary.experiment_id is not None
    assert canary.experiment_id.startswith("fraud-2-")
    step = transitions.canary("fraud", "2", 25.0)(canary, NOW + 20)
    assert step.experiment_id == canary.experiment_id  # one experiment across the steps


def test_ab_draws_a_fresh_salt_and_takes_a_given_experiment_id() -> None:
    canary = transitions.canary("fraud", "2", 5.0)(primary_only(), NOW)
    ab = transitions.ab("fraud", "2", 50.0, experiment_id="exp-7")(canary, NOW + 1)
    assert (ab.mode, ab.percent, ab.experiment_id) == ("ab", 50.0, "exp-7")
    assert ab.salt != canary.salt and ab.started_at == canary.started_at


def test_refusals_name_their_field() -> None:
    state = primary_only()
    with pytest.raises(InvalidInputError) as info:
        transitions.canary("fraud", "2", 0.0)  # refused before any state is read
    assert info.value.field == "percent"
    with pytest.raises(InvalidInputError) as info:
        transitions.set_percent("fraud", 101.0)
    assert info.value.field == "percent"
    with pytest.raises(InvalidInputError) as info:
        transitions.shadow("fraud", "1")(state, NOW)
    assert info.value.field == "candidate"
    shadowing = transitions.shadow("fraud", "2")(state, NOW)
    with pytest.raises(InvalidInputError) as info:
        transitions.set_percent("fraud", 10.0)(shadowing, NOW)
    assert info.value.field == "mode"
    with pytest.raises(ConflictError):
        transitions.canary("fraud", "3", 5.0)(shadowing, NOW)
    with pytest.raises(ConflictError):
        transitions.set_primary("fraud", "3")(shadowing, NOW)
    for end in (transitions.promote("fraud"), transitions.rollback("fraud")):
        with pytest.raises(InvalidInputError):
            end(state, NOW)


def test_promote_and_rollback_end_the_rollout() -> None:
    canary = transitions.canary("fraud", "2", 50.0)(primary_only(), NOW)
    promoted = transitions.promote("fraud")(canary, NOW + 1)
    rolled_back = transitions.rollback("fraud")(canary, NOW + 1)
    for ended, primary in ((promoted, "2"), (rolled_back, "1")):
        assert ended.primary == primary
        assert (ended.candidate, ended.mode, ended.percent) == (None, "off", 0.0)
        assert (ended.experiment_id, ended.started_at) == (None, None)


def test_validated_and_model_names() -> None:
    with pytest.raises(InvalidInputError) as info:
        validated(primary_only(), percent=150.0)
    assert info.value.field == "percent"
    with pytest.raises(InvalidInputError):
        validated(primary_only(), mode="canary")  # canary without a candidate
    check_model_name("m" * 200)
    for bad in ("", "m" * 201):
        with pytest.raises(InvalidInputError) as info:
            check_model_name(bad)
        assert info.value.field == "model"


def test_served_stage_follows_the_rollout_state() -> None:
    from services.rollout.transitions import served_stage

    state = RolloutState(model="m", primary="2", candidate="3", mode="shadow")
    assert served_stage("2", "staging", state) == "production"
    assert served_stage("1", "production", state) == "archived"
    assert served_stage("3", "staging", state) == "staging"
    assert served_stage("1", "production", None) == "production"
