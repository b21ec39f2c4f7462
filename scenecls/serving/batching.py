"""Dynamic batching: images from concurrent requests run through the model together.

A model on a CPU classifies a batch of 16 images in far less than 16 times one image's time, so a
server that ran each request alone would waste most of its cores. :class:`Batcher` queues every image
it is given and, whenever the model is free, takes what is waiting (up to ``max_batch``, waiting at most
``max_wait`` seconds for more) and runs it in one call on a thread of its own, so the event loop keeps
reading requests meanwhile. The queue is bounded: a request that would overfill it is refused at once
(:class:`QueueFull`), which the server answers with 503 and ``Retry-After`` instead of letting memory
and latency grow without end. Stopping drains the queue: every image accepted is answered.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

_STOP = object()


class QueueFull(Exception):
    """The queue cannot take the images: ``retry_after`` seconds is when it likely can."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class BatchStats:
    """What the batcher has done so far (for ``/health`` and the closing line)."""

    images: int = 0
    batches: int = 0
    busy_seconds: float = 0.0

    @property
    def images_per_second(self) -> float | None:
        return self.images / self.busy_seconds if self.busy_seconds > 0 else None


class Batcher:
    """Runs ``predict`` (``(n, h, w, 3)`` float32 -> ``(n, classes)``) on batches of queued images."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int,
        max_wait: float,
        max_queue: int,
    ) -> None:
        self._predict = predict
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._queued = 0  # images waiting, not yet taken into a batch
        # One thread: the runtimes are not all safe to call from two threads at once, and one batch at a
        # time already keeps every core busy (the runtimes use several threads inside one call).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scenecls-model")

    @property
    def queued(self) -> int:
        return self._queued

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="scenecls-batcher")

    async def stop(self) -> None:
        """Answer every image already accepted, then stop."""
        if self._task is None or self._queue is None:
            return
        self._queue.put_nowait(_STOP)
        await self._task
        self._executor.shutdown(wait=True)
        self._task = None

    async def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Each image's probabilities, once its batch has run; :class:`QueueFull` at once when the queue
        cannot take them all (none of them is queued then)."""
        if self._queue is None or self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        if self._queued + len(images) > self.max_queue:
            raise QueueFull(self._retry_after(len(images)))
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        for image, future in zip(images, futures, strict=True):
            self._queue.put_nowait((image, future))
        self._queued += len(images)
        return list(await asyncio.gather(*futures))

    def _retry_after(self, extra: int) -> int:
        rate = self.stats.images_per_second or 1.0
        return max(1, math.ceil((self._queued + extra) / rate))

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    if self._queue.empty():
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    else:
                        item = self._queue.get_nowait()
                except TimeoutError:
                    break
                if item is _STOP:
                    stopping = True  # run this batch, and what is queued behind the stop below
                    break
                batch.append(item)
            self._queued -= len(batch)
            await self._run_batch(loop, batch)
        while not self._queue.empty():  # accepted before the stop: answered all the same
            leftover = [item for item in _drain(self._queue) if item is not _STOP]
            self._queued -= len(leftover)
            for start in range(0, len(leftover), self.max_batch):
                await self._run_batch(loop, leftover[start : start + self.max_batch])

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list) -> None:
        images = np.stack([image for image, _ in batch]).astype(np.float32, copy=False)
        started = time.perf_counter()
        try:
            probabilities = await loop.run_in_executor(self._executor, self._predict, images)
        except Exception as exc:  # one failing batch fails its own requests, not the server
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        self.stats.busy_seconds += time.perf_counter() - started
        self.stats.images += len(batch)
        self.stats.batches += 1
        for (_, future), row in zip(batch, probabilities, strict=True):
            if not future.done():  # a request whose client went away was cancelled
                future.set_result(row)


def _drain(queue: asyncio.Queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
