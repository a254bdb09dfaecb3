"""Rates, latencies and counters the node reports on /diagnostics (ROS-free, tested here)."""
import time
from collections import defaultdict, deque
from typing import Dict

import numpy as np


class NodeStats:
    def __init__(self, window: int = 200, clock=time.monotonic):
        self.clock = clock
        self.window = window
        self.arrivals = defaultdict(lambda: deque(maxlen=window))
        self.latency_ms = defaultdict(lambda: deque(maxlen=window))
        self.bad_frames = defaultdict(int)
        self.published = defaultdict(int)
        self.overlays = defaultdict(int)

    def frame_arrived(self, camera: str) -> None:
        self.arrivals[camera].append(self.clock())

    def rate_hz(self, camera: str) -> float:
        t = self.arrivals[camera]
        if len(t) < 2 or t[-1] == t[0]:
            return 0.0
        return (len(t) - 1) / (t[-1] - t[0])

    def add_timings(self, timings: Dict[str, float]) -> None:
        total = 0.0
        for stage, sec in timings.items():
            self.latency_ms[stage].append(1000 * sec)
            total += sec
        self.latency_ms["total"].append(1000 * total)

    def percentiles(self) -> Dict[str, Dict[str, float]]:
        return {stage: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))}
                for stage, v in self.latency_ms.items() if v}

    def key_values(self, buffer, backend: str, model: str, precision: str) -> Dict[str, str]:
        kv = {"backend": backend, "model": model, "precision": precision}
        cameras = sorted(set(self.arrivals) | set(buffer.received) | set(self.bad_frames))
        for cam in cameras:
            kv[f"{cam} input rate (Hz)"] = f"{self.rate_hz(cam):.2f}"
            kv[f"{cam} received"] = str(buffer.received[cam])
            kv[f"{cam} dropped (newer frame)"] = str(buffer.dropped[cam])
            kv[f"{cam} dropped (older than max_age_ms)"] = str(buffer.stale[cam])
            kv[f"{cam} bad frames"] = str(self.bad_frames[cam])
            kv[f"{cam} published"] = str(self.published[cam])
            kv[f"{cam} overlays"] = str(self.overlays[cam])
        for stage, p in self.percentiles().items():
            kv[f"latency {stage} p50 (ms)"] = f"{p['p50']:.1f}"
            kv[f"latency {stage} p99 (ms)"] = f"{p['p99']:.1f}"
        return kv

    def level(self, buffer) -> int:
        """0 OK, 1 WARN (frames dropped or bad), as diagnostic_msgs levels."""
        bad = sum(self.bad_frames.values()) + sum(buffer.stale.values())
        return 1 if bad else 0
