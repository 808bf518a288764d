"""Micro-batching: concurrent single requests share one `classify_batch` call."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

import anyio.to_thread

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

RunBatch = Callable[[Sequence[str], K], Sequence[T]]


class MicroBatcher(Generic[K, T]):
    """Collects texts for up to `max_wait_s` (only while a batch is running) or `max_size`
    texts, then runs them as one batch.

    Texts are grouped by `key` (the classify options): one call to `run` per key, in a worker
    thread, so blocking model work never runs on the event loop. At most `max_in_flight`
    batches run at once; the next one is collected meanwhile, so it grows with the load.
    """

    def __init__(self, run: RunBatch, max_size: int = 32, max_wait_s: float = 0.002,
                 max_in_flight: int = 2) -> None:
        self._run = run
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._pending: deque[tuple[str, K, asyncio.Future[T]]] = deque()
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._worker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start collecting (call from the running event loop)."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._collect(), name="labelrank-microbatch")

    async def stop(self) -> None:
        """Stop collecting; waiting requests fail, batches already running finish."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while self._pending:
            future = self._pending.popleft()[2]
            if not future.done():
                future.set_exception(RuntimeError("the service is shutting down"))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def submit(self, text: str, key: K) -> T:
        """The outcome for one text, computed within some batch."""
        if self._worker is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((text, key, future))
        self._arrived.set()
        return await future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Waiting for a free slot first means that, under load, requests pile up
            # meanwhile and the next batch is taken full at once.
            await self._slots.acquire()
            try:
                while not self._pending:
                    self._arrived.clear()
                    await self._arrived.wait()
                # Idle, nobody else is coming: waiting would only add latency. Busy, more
                # requests are on their way: wait a little so they share this batch.
                deadline = loop.time() + (self.max_wait_s if self._tasks else 0.0)
                while len(self._pending) < self.max_size and loop.time() < deadline:
                    self._arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
            except BaseException:
                self._slots.release()
                raise
            count = min(len(self._pending), self.max_size)
            batch = [self._pending.popleft() for _ in range(count)]
            task = asyncio.create_task(self._dispatch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _dispatch(self, batch: list[tuple[str, K, asyncio.Future[T]]]) -> None:
        groups: dict[K, list[tuple[str, asyncio.Future[T]]]] = {}
        for text, key, future in batch:
            groups.setdefault(key, []).append((text, future))
        for key, items in groups.items():
            pending = [(t, f) for t, f in items if not f.done()]  # skip cancelled requests
            if not pending:
                continue
            try:
                outcomes = await anyio.to_thread.run_sync(
                    self._run, [t for t, _ in pending], key)
            except Exception as exc:
                for _, future in pending:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), outcome in zip(pending, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
