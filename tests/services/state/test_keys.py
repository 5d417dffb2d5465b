"""Key building: exact bytes, so a layout change is a deliberate, visible act."""

from __future__ import annotations

import hashlib

import numpy as np

from services.state import keys

ROW = np.array([1.0, 2.5, -3.0], dtype=np.float32)
ROW_DIGEST = "68dd16860859dd20e2ad95efce04f7d1"


def test_row_digest_is_blake2b_128_of_little_endian_float32() -> None:
    expected = hashlib.blake2b(b"\x00\x00\x80?\x00\x00 @\x00\x00@\xc0", digest_size=16)
    assert keys.row_digest(ROW) == expected.digest()
    assert keys.row_digest(ROW).hex() == ROW_DIGEST


def test_row_digest_is_canonical_across_dtype_order_and_layout() -> None:
    as_f64 = ROW.astype(np.float64)
    big_endian = ROW.astype(">f4")
    strided = np.array([[1.0, 9.0], [2.5, 9.0], [-3.0, 9.0]], dtype=np.float32)[:, 0]
    for row in (as_f64, big_endian, strided, [1.0, 2.5, -3.0]):
        assert keys.row_digest(np.asarray(row)) == keys.row_digest(ROW)
    assert keys.row_digest(ROW[::-1]) != keys.row_digest(ROW)


def test_prediction_key() -> None:
    assert keys.prediction_key("fraud", "v1", ROW) == (
        b"servekit:pred:fraud:v1:" + ROW_DIGEST.encode()
    )
    digest = keys.row_digest(ROW)
    assert keys.prediction_key_from_digest("fraud", "v1", digest) == keys.prediction_key(
        "fraud", "v1", ROW
    )


def test_parts_are_escaped_so_tuples_cannot_collide() -> None:
    assert keys.escape("a:b%c") == b"a%3Ab%25c"
    assert keys.escape("{a}") == b"%7Ba%7D"
    assert keys.prediction_key("a:b", "c", ROW) == b"servekit:pred:a%3Ab:c:" + ROW_DIGEST.encode()
    assert keys.prediction_key("a:b", "c", ROW) != keys.prediction_key("a", "b:c", ROW)
    assert keys.feature_key("v", "1", "u:1") == b"servekit:feat:{v}:1:u%3A1"


def test_feature_keys() -> None:
    assert keys.feature_key_prefix("user_stats") == b"servekit:feat:{user_stats}:"
    assert (
        keys.feature_key("user_stats", "20261128T020000Z-0a1b2c3d", "u000042")
        == b"servekit:feat:{user_stats}:20261128T020000Z-0a1b2c3d:u000042"
    )
    assert keys.view_pointer_key("user_stats") == b"servekit:featptr:{user_stats}"
    assert keys.view_versions_key("user_stats") == b"servekit:featver:{user_stats}"
    assert keys.view_index_key("user_stats", "7") == b"servekit:featidx:{user_stats}:7"


def test_realtime_and_stream_keys() -> None:
    assert keys.realtime_state_key("user_activity", "u1") == b"servekit:rt:{user_activity}:u1"
    assert (
        keys.realtime_last_key("user_activity", "u1", "amount")
        == b"servekit:rt:{user_activity}:u1:last:amount"
    )
    assert keys.realtime_window_key("user_activity", "u1") == b"servekit:rt:{user_activity}:u1:win"
    assert keys.realtime_heartbeat_key("user_activity") == b"servekit:rtbeat:{user_activity}"
    assert keys.event_stream_key() == b"servekit:events"
    assert keys.event_seen_key("v", "g", "e:1") == b"servekit:evseen:{v}:g:e%3A1"


def test_rollout_keys() -> None:
    assert keys.rollout_state_key("fraud") == b"servekit:{rollouts}:fraud"
    assert keys.rollout_history_key("fraud") == b"servekit:{rollouts}:fraud:history"
    assert keys.rollout_state_key("a:history") == b"servekit:{rollouts}:a%3Ahistory"
    assert keys.rollout_history_key("a") != keys.rollout_state_key("a:history")
    assert keys.rollout_models_key() == b"servekit:{rollouts}"
    assert keys.rollout_channel(0) == "servekit:rollout"
    assert keys.rollout_channel(5) == "servekit:rollout:db5"


def test_feedback_keys() -> None:
    assert keys.experiment_counters_key("fraud", "exp:1", "candidate") == (
        b"servekit:experiment:fraud:exp%3A1:candidate"
    )
    assert (
        keys.experiment_latency_key("fraud", "e", "primary")
        == b"servekit:experiment:fraud:e:primary:latency"
    )
    assert keys.experiments_key("fraud") == b"servekit:experiments:fraud"
    assert keys.outcome_key("fraud", "e", "primary", "req-1") == (
        b"servekit:outcome:{servekit:experiment:fraud:e:primary}:req-1"
    )
    # Braces and colons in any part are escaped: the tag stays the counters key.
    assert keys.outcome_key("m}", "e{", "candidate", "a:b}%") == (
        b"servekit:outcome:{servekit:experiment:m%7D:e%7B:candidate}:a%3Ab%7D%25"
    )


def test_an_outcome_key_shares_its_counters_slot() -> None:
    from services.state.redis_clients import slot_of

    for model, exp, variant in (("fraud", "e", "primary"), ("m}", "x{y", "candidate")):
        counters = keys.experiment_counters_key(model, exp, variant)
        for request_id in ("req-1", "r{2}", "0192f3a4b5c67d8e9f0a1b2c3d4e5f60"):
            assert slot_of(keys.outcome_key(model, exp, variant, request_id)) == slot_of(counters)


def test_prediction_and_shadow_stream_keys() -> None:
    assert keys.prediction_stream_key("fraud") == b"servekit:predictions:fraud"
    assert keys.prediction_stream_key("m:1") == b"servekit:predictions:m%3A1"
    assert keys.shadow_stream_key("fraud") == b"servekit:shadow:fraud"
    assert keys.shadow_stream_key("m:1") == b"servekit:shadow:m%3A1"


def test_drift_result_keys() -> None:
    assert keys.drift_results_key() == b"servekit:drift"
    assert keys.drift_field("fraud", "3") == b"fraud:3"
    # A ':' inside a model name cannot pass for the version separator.
    assert keys.drift_field("a:b", "c") == b"a%3Ab:c" != keys.drift_field("a", "b:c")


def test_hash_tags_keep_each_scripts_keys_in_one_slot() -> None:
    """The keys one script or atomic step touches share a Redis Cluster slot."""
    from services.state.redis_clients import slot_of

    view = {
        slot_of(k)
        for k in (
            keys.view_pointer_key("user_stats"),
            keys.feature_key("user_stats", "v1", "u1"),
            keys.feature_key("user_stats", "v2", "u9"),
            keys.view_versions_key("user_stats"),
            keys.view_index_key("user_stats", "v1"),
        )
    }
    realtime = {
        slot_of(k)
        for k in (
            keys.realtime_heartbeat_key("user_activity"),
            keys.realtime_state_key("user_activity", "u1"),
            keys.realtime_window_key("user_activity", "u2"),
            keys.realtime_last_key("user_activity", "u3", "amount"),
            keys.event_seen_key("user_activity", "g", "e1"),
        )
    }
    rollout = {
        slot_of(k)
        for k in (
            keys.rollout_models_key(),
            keys.rollout_state_key("fraud"),
            keys.rollout_history_key("a{b}"),
        )
    }
    assert len(view) == len(realtime) == len(rollout) == 1
    # A brace inside a part cannot move the tag: it is escaped.
    assert slot_of(keys.feature_key("{x}", "1", "u")) == slot_of(keys.view_pointer_key("{x}"))
    # Prediction keys carry no tag, so they spread over the slots.
    rows = [np.array([float(i)], dtype=np.float32) for i in range(50)]
    assert len({slot_of(keys.prediction_key("fraud", "v1", r)) for r in rows}) > 40
