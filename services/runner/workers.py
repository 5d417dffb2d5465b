"""The daemon threads that run backend calls off the event loop."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from services.runner.niceness import lower_thread_priority


class WorkerThreads:
    """Daemon threads that run backend calls; a thread stuck in a hung call is replaced.

    A hung call that cannot be stopped keeps its thread; ``replace`` starts a spare thread so
    the pool keeps its size, and the first thread to finish while spares exist retires.
    """

    def __init__(self, threads: int, name: str, nice: int = 0) -> None:
        self._size = threads
        self._name = name
        self._nice = nice
        self._tasks: queue.SimpleQueue[tuple[Callable[[], None]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._spares = 0

    def submit(self, fn: Callable[[], None]) -> None:
        if self._threads < self._size:
            with self._lock:
                while self._threads < self._size:
                    self._start()
        self._tasks.put((fn,))

    def replace(self) -> None:
        with self._lock:
            self._spares += 1
            self._start()

    def shutdown(self) -> None:
        with self._lock:
            for _ in range(self._threads):
                self._tasks.put(None)

    def _start(self) -> None:
        self._threads += 1
        threading.Thread(
            target=self._work, name=f"{self._name}-{self._threads}", daemon=True
        ).start()

    def _work(self) -> None:
        lower_thread_priority(self._nice)
        while True:
            item = self._tasks.get()
            if item is None:
                return
            item[0]()
            if self._spares:
                with self._lock:
                    if self._spares:
                        self._spares -= 1
                        self._threads -= 1
                        return
