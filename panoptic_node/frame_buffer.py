"""Newest-frame-wins hand-over between subscription callbacks and the inference thread.

Callbacks only `put()` (cheap, never blocks on inference); the worker `take()`s the newest frame
of every camera. A frame replaced before the worker took it is a drop; a frame older than
`max_age` by the node clock when taken is stale (also dropped). Both are counted per camera. A frame
whose header stamp is 0 (a driver that does not stamp) has no age to judge: it is counted as unstamped
and kept, so such a camera is served and reported rather than dropped frame after frame as stale.
"""
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional


@dataclass
class Pending:
    msg: Any
    stamp_ns: int        # the frame's header stamp
    received_ns: int     # node clock at put()


class LatestFrameBuffer:
    def __init__(self, clock_ns: Callable[[], int], max_age_ms: int = 0):
        self.clock_ns = clock_ns
        self.max_age_ns = int(max_age_ms) * 1_000_000
        self._slots: Dict[str, Pending] = {}
        self._cond = threading.Condition()
        self.received = defaultdict(int)
        self.dropped = defaultdict(int)
        self.stale = defaultdict(int)
        self.unstamped = defaultdict(int)
        self.stale_age_ns = {}  # camera -> how old its last stale frame was (node clock - stamp)
        self.closed = False

    def put(self, camera: str, msg: Any, stamp_ns: int) -> None:
        with self._cond:
            self.received[camera] += 1
            if stamp_ns == 0:
                self.unstamped[camera] += 1
            if camera in self._slots:
                self.dropped[camera] += 1  # the worker never saw the older one
            self._slots[camera] = Pending(msg, stamp_ns, self.clock_ns())
            self._cond.notify()

    def take(self, timeout: Optional[float] = None) -> Dict[str, Pending]:
        """Newest pending frame of every camera (empty on timeout or close); stale ones are dropped."""
        with self._cond:
            if not self._slots and not self.closed:
                self._cond.wait(timeout)
            slots, self._slots = self._slots, {}
        if not self.max_age_ns:
            return slots
        now = self.clock_ns()
        fresh = {}
        for camera, p in slots.items():
            if p.stamp_ns != 0 and now - p.stamp_ns > self.max_age_ns:
                self.stale[camera] += 1
                self.stale_age_ns[camera] = now - p.stamp_ns
            else:
                fresh[camera] = p
        return fresh

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
