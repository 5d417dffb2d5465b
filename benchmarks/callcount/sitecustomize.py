"""Python-call counting for servers started by ``benchmarks/versions.py --calls``.

Python imports this module at start-up when its folder is on ``PYTHONPATH`` (only the
servers that ``--calls`` starts have it there). In each process it installs two signal
handlers: SIGUSR1 starts counting the main thread's Python function calls (the gateway's
event loop, where every request is parsed, routed and answered), SIGUSR2 stops and writes
them to ``<tempdir>/servekit-calls-<pid>.pstats``. Calls per request are deterministic,
so a change that adds work to the request path shows up on a machine too noisy for
throughput to show it.
"""

from __future__ import annotations

import cProfile
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

_profile: cProfile.Profile | None = None


def stats_path(pid: int) -> Path:
    """Where process ``pid`` writes its counts."""
    return Path(tempfile.gettempdir()) / f"servekit-calls-{pid}.pstats"


def _start(signum: int, frame: Any) -> None:
    global _profile
    _profile = cProfile.Profile()
    _profile.enable()


def _stop(signum: int, frame: Any) -> None:
    global _profile
    if _profile is not None:
        _profile.disable()
        _profile.dump_stats(stats_path(os.getpid()))
        _profile = None


signal.signal(signal.SIGUSR1, _start)
signal.signal(signal.SIGUSR2, _stop)
