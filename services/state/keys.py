"""Redis key building: pure functions, one per kind of key (after Feast's Redis store).

Every key is bytes under the ``servekit:`` namespace (the pub/sub channel's name is a
str). Parts taken from callers (model, version, view, entity id, event id, request id,
experiment, variant) are escaped so that a ``:`` inside a part can never make two
different tuples build the same key (``%`` -> ``%25``, ``:`` -> ``%3A``), and so that a
brace in a part can never move a hash tag (``{`` -> ``%7B``, ``}`` -> ``%7D``).

Hash tags (literal braces below) keep the keys that one Lua script or one atomic step
touches in one Redis Cluster slot: all keys of a feature view share the view's slot (its
read script resolves the current version and reads the rows in one step), all rollout
keys share one slot (a transition writes the state, its history and the model set at
once), and a prediction's outcome claim shares its variant's counters' slot (one script
claims it and counts it). Keys without a tag (predictions, counters, streams) spread over
the cluster. On a single Redis the braces are plain characters. Angle brackets are the
parts::

    servekit:pred:<model>:<version>:<blake2b-128 hex of the input row>   prediction
    servekit:feat:{<view>}:<version>:<entity>      batch view row (hash: feature -> value)
    servekit:featptr:{<view>}                      current version (hash: version, ...)
    servekit:featver:{<view>}                      versions written (set), for clean-up
    servekit:featidx:{<view>}:<version>            entity ids of one version (set)
    servekit:rt:{<view>}:<entity>                  real-time state (hash: last_ts, ...)
    servekit:rt:{<view>}:<entity>:last:<field>     last N values of a field (list)
    servekit:rt:{<view>}:<entity>:win              recent events (sorted set by time)
    servekit:rtbeat:{<view>}                       real-time worker heartbeat (string)
    servekit:events                                event stream
    servekit:evseen:{<view>}:<group>:<event_id>    event applied to a view by a group
    servekit:{rollouts}:<model>                    rollout state (hash: rev, state)
    servekit:{rollouts}:<model>:history            rollout changes (stream, capped)
    servekit:{rollouts}:<model>:canary             a running canary step's progress (JSON)
    servekit:{rollouts}                            models with a rollout state (set)
    servekit:rollout[:db<n>]                       rollout notices (pub/sub channel)
    servekit:experiment:<model>:<exp>:<variant>    a variant's counters (hash)
    servekit:experiment:<model>:<exp>:<variant>:latency   its latency histogram (hash)
    servekit:outcome:{servekit:experiment:<model>:<exp>:<variant>}:<request_id>
                                                   a prediction's outcome, counted (string)
    servekit:experiments:<model>                   experiments by first sight (sorted set)
    servekit:predictions:<model>                   served predictions (stream, capped)
    servekit:shadow:<model>                        shadow comparisons (stream, capped)
    servekit:drift                                 latest drift result per version (hash:
                                                   <model>:<version> -> small JSON)
"""

from __future__ import annotations

import hashlib

import numpy as np

NAMESPACE = b"servekit"


def escape(part: str) -> bytes:
    """One key part as bytes, with ``%``, ``:``, ``{`` and ``}`` escaped."""
    return (
        part.replace("%", "%25")
        .replace(":", "%3A")
        .replace("{", "%7B")
        .replace("}", "%7D")
        .encode()
    )


def tag(part: str) -> bytes:
    """``part`` escaped and braced: a Redis Cluster hash tag (keys with it share a slot)."""
    return b"{" + escape(part) + b"}"


def row_digest(row: np.ndarray) -> bytes:
    """blake2b-128 of a feature row's canonical bytes (contiguous little-endian float32)."""
    canonical = np.ascontiguousarray(row, dtype="<f4").tobytes()
    return hashlib.blake2b(canonical, digest_size=16).digest()


def prediction_key_from_digest(model: str, version: str, digest: bytes) -> bytes:
    """The prediction cache key of a row whose :func:`row_digest` is ``digest``."""
    return b":".join((NAMESPACE, b"pred", escape(model), escape(version), digest.hex().encode()))


def prediction_key(model: str, version: str, row: np.ndarray) -> bytes:
    """The prediction cache key of one input row of ``model`` at ``version``."""
    return prediction_key_from_digest(model, version, row_digest(row))


def feature_key_prefix(view: str) -> bytes:
    """The start of every row key of a batch view; the version and entity follow."""
    return b":".join((NAMESPACE, b"feat", tag(view))) + b":"


def feature_key(view: str, version: str, entity_id: str) -> bytes:
    """The hash holding one entity's features in one version of a batch view."""
    return feature_key_prefix(view) + escape(version) + b":" + escape(entity_id)


def view_pointer_key(view: str) -> bytes:
    """The hash naming a batch view's current version (``version``, ``materialized_at``)."""
    return b":".join((NAMESPACE, b"featptr", tag(view)))


def view_versions_key(view: str) -> bytes:
    """The set of a batch view's versions still holding keys (current and leftovers)."""
    return b":".join((NAMESPACE, b"featver", tag(view)))


def view_index_key(view: str, version: str) -> bytes:
    """The set of entity ids written in one version of a batch view."""
    return b":".join((NAMESPACE, b"featidx", tag(view), escape(version)))


def realtime_state_key(view: str, entity_id: str) -> bytes:
    """The hash of an entity's real-time state (``last_ts``)."""
    return b":".join((NAMESPACE, b"rt", tag(view), escape(entity_id)))


def realtime_last_key(view: str, entity_id: str, field: str) -> bytes:
    """The list of an entity's most recent values of ``field``, newest first."""
    return realtime_state_key(view, entity_id) + b":last:" + escape(field)


def realtime_window_key(view: str, entity_id: str) -> bytes:
    """The sorted set of an entity's recent event ids, scored by event time."""
    return realtime_state_key(view, entity_id) + b":win"


def realtime_heartbeat_key(view: str) -> bytes:
    """When the real-time worker last ran for ``view`` (epoch seconds)."""
    return b":".join((NAMESPACE, b"rtbeat", tag(view)))


def event_stream_key() -> bytes:
    """The capped stream of incoming events."""
    return NAMESPACE + b":events"


def event_seen_key(view: str, group: str, event_id: str) -> bytes:
    """Marks that ``group`` has applied event ``event_id`` to ``view`` (replays are skipped)."""
    return b":".join((NAMESPACE, b"evseen", tag(view), escape(group), escape(event_id)))


# --------------------------------------------------------------------------- rollouts


def rollout_state_key(model: str) -> bytes:
    """The hash of ``model``'s rollout state (``rev``, ``state`` JSON)."""
    return rollout_models_key() + b":" + escape(model)


def rollout_history_key(model: str) -> bytes:
    """The capped stream of ``model``'s rollout changes."""
    return rollout_state_key(model) + b":history"


def canary_progress_key(model: str) -> bytes:
    """The progress of ``model``'s running canary step (string: JSON, with a TTL)."""
    return rollout_state_key(model) + b":canary"


def rollout_models_key() -> bytes:
    """The set of models that have a rollout state (every rollout key shares its tag)."""
    return NAMESPACE + b":" + tag("rollouts")


def rollout_channel(db: int) -> str:
    """The pub/sub channel of rollout notices for Redis database ``db``.

    Channels are server-wide, not per database, so each database gets its own; database
    0 keeps the plain name.
    """
    channel = NAMESPACE.decode() + ":rollout"
    return channel if db == 0 else f"{channel}:db{db}"


# --------------------------------------------------------------------------- feedback


def experiment_counters_key(model: str, experiment_id: str, variant: str) -> bytes:
    """The hash of one variant's counters in one experiment."""
    return b":".join(
        (NAMESPACE, b"experiment", escape(model), escape(experiment_id), escape(variant))
    )


def experiment_latency_key(model: str, experiment_id: str, variant: str) -> bytes:
    """The hash of one variant's latency histogram (bucket -> count) in one experiment."""
    return experiment_counters_key(model, experiment_id, variant) + b":latency"


def outcome_key(model: str, experiment_id: str, variant: str, request_id: str) -> bytes:
    """Marks that one prediction's outcome was counted (string, with a TTL).

    Its hash tag is the whole :func:`experiment_counters_key` of the prediction's variant:
    that key has no tag of its own (escaped parts hold no braces), so its slot is its
    whole name's, and the claim and the increments meet in one script on a Redis Cluster.
    """
    counters = experiment_counters_key(model, experiment_id, variant)
    return b":".join((NAMESPACE, b"outcome", b"{" + counters + b"}", escape(request_id)))


def experiments_key(model: str) -> bytes:
    """The sorted set of ``model``'s experiments, scored by when each was first seen."""
    return b":".join((NAMESPACE, b"experiments", escape(model)))


# --------------------------------------------------------------------------- streams


def prediction_stream_key(model: str) -> bytes:
    """The capped stream of ``model``'s served predictions."""
    return b":".join((NAMESPACE, b"predictions", escape(model)))


def shadow_stream_key(model: str) -> bytes:
    """The capped stream of ``model``'s shadow comparisons (primary and candidate answers)."""
    return b":".join((NAMESPACE, b"shadow", escape(model)))


# --------------------------------------------------------------------------- monitoring


def drift_results_key() -> bytes:
    """The hash of the latest drift result of every reported version (field:
    :func:`drift_field`, value: a small JSON the gateways export as metrics)."""
    return NAMESPACE + b":drift"


def drift_field(model: str, version: str) -> bytes:
    """The field of one version's result in :func:`drift_results_key`."""
    return escape(model) + b":" + escape(version)
