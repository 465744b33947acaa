"""The threads of an embedding run besides the main one, which draws the workers' results.

- :func:`consume_in_thread`: the model's thread, fed through a bounded queue, so the device
  works while the next files arrive;
- :class:`CacheWriter`: the cache's thread, so the file-system sync that makes each batch of
  entries durable never holds up the model.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from ..io.audio import FileIdentity
from .cache import EmbeddingCache

T = TypeVar("T")
Entry = tuple[Path, FileIdentity, np.ndarray]  # (audio, identity, (D,) embedding)


def consume_in_thread(items: Iterator[T], consume: Callable[[T], None], depth: int) -> None:
    """Call ``consume`` on every item in a second thread while this thread draws them.

    At most ``depth`` items wait between the two. An exception in ``consume`` stops the
    drawing and is raised here; one raised while drawing is raised after the items already
    drawn are consumed.
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    failure: list[BaseException] = []

    def consumer() -> None:
        while (item := handoff.get()) is not done:
            if failure:
                continue  # drain, so the drawing thread never blocks on a full queue
            try:
                consume(item)
            except BaseException as err:  # noqa: BLE001 - re-raised in the drawing thread
                failure.append(err)

    thread = threading.Thread(target=consumer, name="mirex-vi-model", daemon=True)
    thread.start()
    try:
        for item in items:
            if failure:
                break
            handoff.put(item)
    finally:
        handoff.put(done)
        thread.join()
    if failure:
        raise failure[0]


class CacheWriter:
    """``EmbeddingCache.put_many`` in a thread of its own.

    Batches handed over while one is being written go out together, under one sync. A run
    killed outright loses the batches not yet synced; :meth:`close` writes every batch
    handed over before it returns.
    """

    def __init__(self, cache: EmbeddingCache):
        self._cache = cache
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._write, name="mirex-vi-cache", daemon=True)
        self._thread.start()

    def put_many(self, entries: Sequence[Entry]) -> None:
        """Hand over a batch of entries; returns at once."""
        self._queue.put(list(entries))

    def close(self) -> None:
        """Write every batch handed over, stop the thread, and raise what stopped it early
        (``put_many`` itself only warns about a cache it cannot write)."""
        self._queue.put(None)
        self._thread.join()
        if self._failure:
            raise self._failure[0]

    def _write(self) -> None:
        while True:
            batches = [self._queue.get()]
            while not self._queue.empty():
                batches.append(self._queue.get())
            try:
                self._cache.put_many([e for batch in batches if batch is not None for e in batch])
            except BaseException as err:  # noqa: BLE001 - raised again by close()
                self._failure.append(err)
                return
            if batches[-1] is None:
                return
