"""Work done by several threads at once, its last step taken in the order the work was handed out.

The node's inference workers each take the newest frames, infer them concurrently and must then track
and publish them in the order they were taken: a track continues from the frame before, and a driving
stack reading the maps must never see a stamp older than the one it just had. Each piece of work draws a
ticket when it is taken; `wait(ticket)` returns when every earlier ticket is finished, and `finish(ticket)`
(in a `finally`, so a failure never blocks the tickets after it) lets the next one go.
"""
import threading
from typing import Callable


class InOrder:
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
