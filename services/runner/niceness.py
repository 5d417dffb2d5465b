"""Model threads yield the cores to the event loop.

The gateway's event loop admits, refuses and answers requests; the threads that run models
(the batcher's workers and ONNX Runtime's intra-op pool) can hold every core for as long
as there is work queued. Under overload that turns a refusal, a few microseconds of
work, into a wait of a whole batch for a core. A positive nice value on the model threads
makes the kernel's scheduler hand a core to the loop whenever it has work, while the model
threads keep every cycle the loop does not want. Linux keeps niceness per thread and a
new thread inherits its creator's, so a session created from a niced thread has a niced
pool.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


def lower_thread_priority(nice: int) -> None:
    """Set the calling thread's nice value to ``nice`` when that lowers its priority."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:  # a platform without per-thread niceness: run at normal priority
        logger.debug("cannot lower the priority of a model thread: %s", exc)


def call_niced(fn: Callable[[], T], nice: int) -> T:
    """``fn()`` on a short-lived thread at ``nice``: the threads it starts inherit it."""
    if nice <= 0:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        lower_thread_priority(nice)
        try:
            result.append(fn())
        except BaseException as exc:  # handed back to the caller's thread and raised there
            error.append(exc)

    thread = threading.Thread(target=run, name="servekit-session", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
