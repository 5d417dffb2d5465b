"""A flow run in a child process, for the tests that kill it: ``python -m
tests.flows.flow_child canary|rollout|materialize 'JSON keyword arguments'``.

The child reports to the Prefect API named by ``PREFECT_API_URL`` (the test harness's
server), so its flow runs are real runs that a kill leaves unfinished.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime
from typing import Any


async def _main(kind: str, kwargs: dict[str, Any]) -> None:
    if kind == "canary":
        from flows.canary import canary_promotion

        await canary_promotion(**kwargs)
    elif kind == "rollout":
        from flows.rollout import rollout

        await rollout(**kwargs)
    elif kind == "materialize":
        from flows.materialize import materialize

        if "as_of" in kwargs:
            kwargs["as_of"] = datetime.fromisoformat(kwargs["as_of"])
        await materialize(**kwargs)
    else:
        raise SystemExit(f"unknown flow {kind!r}")


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], json.loads(sys.argv[2])))
