"""What the car's node said of its own health while a drive was recorded (car.launch.py record:= keeps
/diagnostics): its statuses, inference and one per camera, read back from the bag as the time spent at each
level and the first thing each level other than OK said, so a replayed drive shows where the node on the car
was slow, silent or failing. Statuses of other nodes, and the one replay writes, are left out."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

DIAGNOSTICS = "/diagnostics"
LEVELS = {0: "ok", 1: "WARN", 2: "ERROR", 3: "STALE"}
INFERENCE = ": inference"  # the node's inference status is '<node name>: inference' (node_stats, node.py)
GAP_PERIODS = 5  # a report further from the next than this many periods: the node was off in between
# what sets an int8 graph's numbers besides its weights: its calibration, weight width and matrix products
INT8_ARITHMETIC_KEYS = ("int8 scales", "int8 weight bits", "int8 matrix products")
# what an inference status says the node ran: the values replay compares with its own (a node of an older
# release named fewer of them)
RAN_KEYS = ("model", "weights", "backend", "precision", *INT8_ARITHMETIC_KEYS, "version")


@dataclass
class StatusHealth:
    name: str
    seconds: Dict[str, float] = field(default_factory=dict)        # level -> seconds at it
    first: Dict[str, Tuple[float, str]] = field(default_factory=dict)  # level -> (s after the first report, message)
    ran: List[Dict[str, str]] = field(default_factory=list)  # inference: its RAN_KEYS values, each change in order

    @property
    def always_ok(self) -> bool:
        return set(self.seconds) <= {"ok"}

    def line(self) -> str:
        total = sum(self.seconds.values())
        ok = self.seconds.get("ok", 0.0)
        parts = [f"{self.name}: ok {100 * ok / total:.0f} % of {total:.0f} s" if total else f"{self.name}: no time"]
        for level in ("WARN", "ERROR", "STALE"):
            if level in self.seconds:
                at, message = self.first[level]
                parts.append(f"{level} {self.seconds[level]:.1f} s (first at +{at:.1f} s: {message})")
        return "; ".join(parts)

    def ran_lines(self) -> List[str]:
        return [ran_line(values) for values in self.ran]


def is_node_status(status) -> bool:
    """The node's statuses by their names and values (node_stats.py): '<node>: inference' with the backend
    among its values, '<node>: camera <ns>' with its input topic."""
    keys = {kv.key for kv in status.values}
    return (status.name.endswith(INFERENCE) and "backend" in keys) or \
        (": camera " in status.name and "input topic" in keys)


def ran_line(values: Dict[str, str]) -> str:
    """What an inference status says the node ran: model, weights (name and sha256), backend and precision (with
    the int8 scales, name and sha256, and the weights' width), package version (a node of an older release named
    neither weights nor version)."""
    weights = f" ({values['weights']})" if values.get("weights") else ""
    version = f", panoptic_node {values['version']}" if values.get("version") else ""
    runtime = f"{values.get('backend', '?')} {values.get('precision', '')}".rstrip()
    # an int8 graph's outputs depend on its calibration and weight width as on its weights
    int8 = [values.get("int8 scales"), values.get("int8 weight bits") and f"{values['int8 weight bits']}-bit weights",
            values.get("int8 matrix products") and f"{values['int8 matrix products']} matrix products"]
    if any(int8):
        runtime += f" ({', '.join(filter(None, int8))})"
    return f"{values.get('model', '?')}{weights} on {runtime}{version}"


def node_health(reader, window_ns: Optional[Tuple[int, int]] = None) -> List[StatusHealth]:
    """Each of the node's statuses in the bag's /diagnostics (within `window_ns`, as replay's --start /
    --duration), in the order they first appear; [] when the bag has none."""
    if reader.topics.get(DIAGNOSTICS) != "diagnostic_msgs/msg/DiagnosticArray":
        return []
    reports: Dict[str, List[Tuple[int, int, str]]] = {}
    ran: Dict[str, List[Dict[str, str]]] = {}
    for m in reader.messages([DIAGNOSTICS], window_ns=window_ns):
        if m.msg is None:
            continue
        for s in m.msg.status:
            if is_node_status(s):
                reports.setdefault(s.name, []).append((m.stamp_ns, int(s.level), s.message))
                if s.name.endswith(INFERENCE):
                    values = {kv.key: kv.value for kv in s.values if kv.key in RAN_KEYS}
                    if values not in ran.setdefault(s.name, [])[-1:]:
                        ran[s.name].append(values)
    if not reports:
        return []
    start = min(r[0][0] for r in reports.values())
    out = []
    for name, rows in reports.items():
        rows.sort(key=lambda r: r[0])
        times = np.array([t for t, _, _ in rows], dtype=np.float64) / 1e9
        period = float(np.median(np.diff(times))) if len(rows) > 1 else 1.0
        # each report holds until the next one (the last: one period); a long gap counts one period
        held = np.minimum(np.append(np.diff(times), period), GAP_PERIODS * period)
        health = StatusHealth(name, ran=ran.get(name, []))
        for (t, level, message), seconds in zip(rows, held):
            key = LEVELS.get(level, str(level))
            health.seconds[key] = health.seconds.get(key, 0.0) + float(seconds)
            health.first.setdefault(key, ((t - start) / 1e9, message))
        out.append(health)
    return out


def troubles(health: List[StatusHealth]) -> str:
    """The node's recorded health in one cell (fleet's bag table): the lines of the statuses that were not
    always ok, 'ok' when all were, '' when the bag kept none of its reports."""
    lines = [h.line() for h in health if not h.always_ok]
    return "; ".join(lines) if lines else "ok" if health else ""
