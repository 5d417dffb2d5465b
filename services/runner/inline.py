"""When the batcher runs a batch inline on the event loop instead of on a worker thread.

A worker-thread hop costs several times a tiny model's call, so a lane whose measured run
time is below ``below_s`` runs inline when nothing of it is running and it is either
trusted (the pool's pinned models) or stoppable (its backend takes a ``StopSwitch``, as
ONNX Runtime's does). A stoppable lane runs inline under the ``Watchdog``: past
``deadline_s`` its call is stopped, its requests re-run on a worker thread, and the lane
stays off the inline path for a backoff that doubles per stop. So one model holds the loop
for at most the deadline (plus a tick), the isolation worker threads give, at the cost of
an inline call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

from services.runner.lanes import Lane, group_name

logger = logging.getLogger(__name__)

# A lane whose inline call was stopped stays off the inline path this long, doubling per
# stop (capped); its count of stops is forgotten after ``_STRIKES_FORGOTTEN_S`` clean.
_INLINE_BACKOFF_S = 1.0
_INLINE_BACKOFF_MAX_S = 300.0
_STRIKES_FORGOTTEN_S = 600.0


class InlinePolicy:
    """Decides which batches run inline, and keeps the backoff of lanes that were stopped.

    Args:
        below_s: run a lane inline when its mean run time (thread CPU time) is below this.
        deadline_s: longest a stoppable lane's inline call may hold the event loop before
            the watchdog stops it (0: stoppable lanes never run inline).
        trusted: whether a group may run inline unwatched.
    """

    def __init__(
        self, below_s: float, deadline_s: float, trusted: Callable[[Hashable], bool]
    ) -> None:
        self.below_s = below_s
        self.deadline_s = deadline_s
        self._trusted = trusted

    def mode(self, lane: Lane, now: float) -> bool | None:
        """How ``lane``'s next batch runs: ``None`` on a worker thread, ``True`` inline
        under the watchdog, ``False`` inline unwatched (a trusted group)."""
        if lane.running or lane.run_ewma >= self.below_s or now < lane.inline_after:
            return None
        watched = lane.stoppable and self.deadline_s > 0
        if watched or self._trusted(lane.group):
            return watched
        return None

    def stopped(self, lane: Lane, now: float) -> None:
        """``lane``'s inline call was stopped at the deadline: keep it off the inline path
        for a backoff that doubles per stop."""
        if now - lane.last_strike > _STRIKES_FORGOTTEN_S:
            lane.strikes = 0
        lane.strikes += 1
        lane.last_strike = now
        backoff = min(_INLINE_BACKOFF_S * 2 ** (lane.strikes - 1), _INLINE_BACKOFF_MAX_S)
        lane.inline_after = now + backoff
        logger.warning(
            "%s held the event loop past %.1f ms: stopped, re-run on a worker thread; "
            "off the inline path for %g s",
            group_name(lane.group),
            self.deadline_s * 1000,
            backoff,
        )
