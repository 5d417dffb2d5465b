"""Sticky, salted assignment of users (and anonymous requests) to variants."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.rollout.assignment import BUCKETS, assign, bucket
from services.rollout.transitions import RolloutState

ids = st.text(min_size=1, max_size=40)
percents = st.floats(min_value=0, max_value=100, allow_nan=False)


def state(percent: float, mode: str = "canary", salt: str = "exp-1") -> RolloutState:
    return RolloutState(
        model="fraud", primary="v1", candidate="v2", mode=mode, percent=percent, salt=salt
    )


def test_bucket_is_blake2b_of_salt_and_id_big_endian() -> None:
    digest = hashlib.blake2b(b"exp-1:alice", digest_size=8).digest()
    assert bucket("exp-1", "alice") == int.from_bytes(digest, "big") % 10_000
    # Pinned so a change of hash (and so of everyone's assignment) cannot pass unnoticed.
    assert bucket("exp-1", "alice") == 2327
    assert bucket("salt", "user-1") == 2673


@given(salt=st.text(max_size=20), unit=ids, buckets=st.integers(1, 100_000))
def test_bucket_is_in_range(salt: str, unit: str, buckets: int) -> None:
    assert 0 <= bucket(salt, unit, buckets) < buckets


@given(user=ids, request_ids=st.lists(ids, min_size=2, max_size=20), percent=percents)
def test_same_user_same_variant_whatever_the_request(
    user: str, request_ids: list[str], percent: float
) -> None:
    s = state(percent)
    variants = {assign(s, user, rid) for rid in request_ids}
    assert len(variants) == 1
    (only,) = variants
    assert only.unit == "user"
    assert only.version == ("v2" if only.variant == "candidate" else "v1")


@given(user=ids, low=percents, high=percents)
def test_raising_the_share_keeps_candidate_users_on_the_candidate(
    user: str, low: float, high: float
) -> None:
    low, high = sorted((low, high))
    if assign(state(low), user, None).variant == "candidate":
        assert assign(state(high), user, None).variant == "candidate"


@settings(max_examples=5, deadline=None)
@given(salt=st.text(min_size=1, max_size=12), percent=st.sampled_from([5.0, 12.5, 25.0, 50.0]))
def test_split_is_within_one_percent_over_100k_users(salt: str, percent: float) -> None:
    s = state(percent, salt=salt)
    n = 100_000
    on_candidate = sum(assign(s, f"user-{i}", None).variant == "candidate" for i in range(n))
    assert abs(100 * on_candidate / n - percent) < 1.0


def test_another_salt_reshuffles_users() -> None:
    a = [assign(state(50, salt="a"), f"u{i}", None).variant for i in range(2000)]
    b = [assign(state(50, salt="b"), f"u{i}", None).variant for i in range(2000)]
    agreement = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    assert 0.4 < agreement < 0.6


def test_anonymous_requests_are_assigned_per_request() -> None:
    s = state(30)
    first = [assign(s, None, f"req-{i}") for i in range(20_000)]
    again = [assign(s, None, f"req-{i}") for i in range(20_000)]
    assert first == again  # a retried request id lands where it did
    assert all(a.unit == "request" for a in first)
    share = sum(a.variant == "candidate" for a in first) / len(first)
    assert abs(share - 0.30) < 0.01


def test_requests_without_any_id_are_drawn_at_random() -> None:
    s = state(20)
    rng = random.Random(7)
    draws = [assign(s, None, None, rng=rng) for _ in range(20_000)]
    assert all(a.unit == "request" and 0 <= a.bucket < BUCKETS for a in draws)
    share = sum(a.variant == "candidate" for a in draws) / len(draws)
    assert abs(share - 0.20) < 0.01
    assert [a.bucket for a in draws[:5]] != [draws[0].bucket] * 5


def test_empty_user_id_counts_as_anonymous() -> None:
    assert assign(state(50), "", "req-1").unit == "request"


@pytest.mark.parametrize("mode", ["off", "shadow"])
def test_no_live_traffic_to_the_candidate_outside_canary_and_ab(mode: str) -> None:
    s = RolloutState(
        model="fraud",
        primary="v1",
        candidate=None if mode == "off" else "v2",
        mode=mode,
        salt="x",
    )
    assert {assign(s, f"u{i}", None).variant for i in range(1000)} == {"primary"}


def test_edges_of_the_share() -> None:
    users = [f"u{i}" for i in range(5000)]
    assert {assign(state(0), u, None).variant for u in users} == {"primary"}
    assert {assign(state(100), u, None).variant for u in users} == {"candidate"}
    assert {assign(state(100, mode="ab"), u, None).version for u in users} == {"v2"}


def test_fractional_percent_resolves_to_buckets() -> None:
    s = state(0.5)
    for i in range(5000):
        a = assign(s, f"u{i}", None)
        assert (a.variant == "candidate") == (a.bucket < 50)
