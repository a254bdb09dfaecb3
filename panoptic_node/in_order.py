"""Work done by several threads at once, its last step taken in the order the work was handed out: a
track continues from the frame before, and a driving stack reading the maps must never see a stamp older
than the one it just had.

InOrder: the node's inference workers, each taking frames and publishing them in their turn.
PipelinesInOrder: replay's, frames given by one caller to several pipelines, results handed back in order.
"""
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Deque, Iterator, Sequence, Tuple


class InOrder:
    """Each piece of work draws a ticket when it is taken; `wait(ticket)` returns when every earlier ticket is
    finished, and `finish(ticket)` (in a `finally`, so a failure never blocks the tickets after it) lets the
    next one go."""

    def __init__(self):
        self._cond = threading.Condition()
        self._issued = 0   # the next ticket to hand out
        self._turn = 0     # the oldest ticket not finished
        self._finished = set()  # tickets finished before their turn came (a failure, or given up)

    def ticket(self) -> int:
        with self._cond:
            ticket, self._issued = self._issued, self._issued + 1
            return ticket

    def wait(self, ticket: int, keep_waiting: Callable[[], bool] = lambda: True, poll_s: float = 0.1) -> bool:
        """True once every ticket before `ticket` is finished; False if keep_waiting() turned false first
        (the node stopping while an earlier piece of work is stuck)."""
        with self._cond:
            while self._turn != ticket:
                if not keep_waiting():
                    return False
                self._cond.wait(poll_s)
            return True

    def finish(self, ticket: int) -> None:
        with self._cond:
            self._finished.add(ticket)
            while self._turn in self._finished:
                self._finished.discard(self._turn)
                self._turn += 1
            self._cond.notify_all()


class PipelinesInOrder:
    """Frames inferred by several pipelines at once (a thread each), their results handed back in the
    order the frames were given: replay's inference workers. Each pipeline runs one frame at a time. Items
    that need no inference (a bag's other messages) pass through in their place, behind the frames before."""

    def __init__(self, pipelines: Sequence):
        self._free: "queue.SimpleQueue" = queue.SimpleQueue()
        for pipeline in pipelines:
            self._free.put(pipeline)
        self._pool = ThreadPoolExecutor(len(pipelines), thread_name_prefix="panoptic_infer")
        self._queue: Deque[Tuple[Any, Future, bool]] = deque()  # (item, its result to be, whether a frame)
        self._frames = 0  # frames in the queue, inferred or not yet handed back
        # one frame waiting beyond one per worker: a worker that finishes finds its next frame ready
        # while the caller handles the result it just got
        self.depth = len(pipelines) + 1

    def frames_in_flight(self) -> int:
        """Frames given and not yet handed back. (No __len__: a queue holding only passed-through items would
        then read as false, and `if pool:` skip them.)"""
        return self._frames

    def _infer(self, rgb):
        pipeline = self._free.get()
        try:
            return pipeline(rgb)
        finally:
            self._free.put(pipeline)

    def submit(self, rgb, item: Any) -> None:
        """Start inferring `rgb`; `item` (the caller's own record of the frame) comes back with its result."""
        self._queue.append((item, self._pool.submit(self._infer, rgb), True))
        self._frames += 1

    def pass_through(self, item: Any) -> None:
        """`item` comes back (with None) after every frame given before it."""
        done: Future = Future()
        done.set_result(None)
        self._queue.append((item, done, False))

    def _next(self) -> Tuple[Any, Any]:
        item, future, frame = self._queue.popleft()
        self._frames -= frame
        return item, future.result()

    def ready(self) -> Iterator[Tuple[Any, Any]]:
        """(item, result) of the oldest items that are done, in order; waits for the oldest while as many
        frames as `depth` are in flight. A frame whose inference raised raises here, in its turn."""
        while self._queue and (self._frames >= self.depth or self._queue[0][1].done()):
            yield self._next()

    def drain(self) -> Iterator[Tuple[Any, Any]]:
        """Everything still queued, in order."""
        while self._queue:
            yield self._next()

    def close(self) -> None:
        """Frames not started are dropped; the ones running finish (a pipeline call cannot be interrupted)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._queue.clear()
        self._frames = 0
