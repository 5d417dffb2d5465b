"""Model threads run at a lower priority than the event loop: the batcher's workers, and
ONNX Runtime's pool threads, which inherit it from the thread that created the session."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from services.runner.backends import _WARM_UP_ONNX, OnnxRuntimeBackend
from services.runner.niceness import call_niced, lower_thread_priority
from services.runner.workers import WorkerThreads


def _nice_of(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def _thread_nices() -> dict[int, int]:
    """Nice value of every thread of this process, by thread id (Linux /proc)."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = int(stat.rsplit(")", 1)[1].split()[16])  # stat field 19: nice
    return out


def test_a_niced_thread_and_what_it_starts_run_at_that_nice() -> None:
    def inner() -> tuple[int, int]:
        seen: list[int] = []
        child = threading.Thread(target=lambda: seen.append(_nice_of(threading.get_native_id())))
        child.start()
        child.join()
        return _nice_of(threading.get_native_id()), seen[0]

    base = _nice_of(threading.get_native_id())
    assert call_niced(inner, base + 5) == (base + 5, base + 5)
    assert _nice_of(threading.get_native_id()) == base  # the caller's thread is untouched
    assert call_niced(lambda: 42, 0) == 42


def test_an_error_in_a_niced_call_is_raised_in_the_caller() -> None:
    def boom() -> None:
        raise ValueError("broken model")

    with pytest.raises(ValueError, match="broken model"):
        call_niced(boom, 3)


def test_lowering_never_raises_priority() -> None:
    seen: list[int] = []

    def run() -> None:
        lower_thread_priority(6)
        lower_thread_priority(2)  # would raise the priority: ignored
        seen.append(_nice_of(threading.get_native_id()))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == [max(6, _nice_of(threading.get_native_id()))]


def test_batch_workers_run_niced() -> None:
    workers = WorkerThreads(2, "test-nice", nice=8)
    seen: list[int] = []
    done = threading.Event()
    workers.submit(lambda: (seen.append(_nice_of(threading.get_native_id())), done.set()))
    assert done.wait(10)
    workers.shutdown()
    assert seen == [8]


def test_onnx_runtime_pool_threads_inherit_the_nice_value() -> None:
    import onnxruntime  # noqa: F401  (its import starts threads of its own: not the pool's)

    before = set(_thread_nices())
    backend = OnnxRuntimeBackend(
        _WARM_UP_ONNX, providers=["CPUExecutionProvider"], threads=3, spinning=False, nice=9
    )
    new = {tid: nice for tid, nice in _thread_nices().items() if tid not in before}
    assert new, "ONNX Runtime started no pool threads"
    assert set(new.values()) == {9}, new
    del backend
