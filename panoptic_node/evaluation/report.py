"""Evaluation outputs people look at: a per-class bar chart (PQ and IoU, or PQ / SQ / RQ). The JSON
report goes through atomic.write_json."""
from pathlib import Path

from ..atomic import atomic_path


def bar_chart(report: dict, path, title: str = "") -> Path:
    """PQ and IoU per class; from COCO-panoptic folders, which carry no semantic scores, PQ, SQ, RQ."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    entries = list(report["per_class"].values())
    names = [e["name"] for e in entries]

    def percent(key):
        return [100 * (e.get(key, 0.0) if e.get(key, 0.0) == e.get(key, 0.0) else 0.0) for e in entries]  # nan: 0
    semantic = report.get("miou") is not None
    bars = [("PQ", percent("pq")), ("IoU", percent("iou"))] if semantic else \
        [("PQ", percent("pq")), ("SQ", percent("sq")), ("RQ", percent("rq"))]
    x = np.arange(len(names))
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(6, 0.275 * len(bars) * len(names) + 2), 4))
    for i, (label, values) in enumerate(bars):
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    frames = f"  ({report['frames']} frames)" if report.get("frames") else ""
    ax.set_title(title or f"PQ {100 * report['pq']['pq']:.1f}"
                          + (f"  mIoU {100 * report['miou']:.1f}" if semantic else "") + frames)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path) -> Path:
    """Save and close a matplotlib figure through a .partial name: never a half-written picture."""
    import matplotlib.pyplot as plt
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return Path(path)
