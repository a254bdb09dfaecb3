"""Evaluation outputs people look at: a per-class bar chart (PQ and IoU). The JSON report goes
through atomic.write_json."""
from pathlib import Path

from ..atomic import atomic_path


def bar_chart(report: dict, path, title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    entries = list(report["per_class"].values())
    names = [e["name"] for e in entries]
    pq = [100 * e.get("pq", 0.0) for e in entries]
    iou = [100 * (e["iou"] if e["iou"] == e["iou"] else 0.0) for e in entries]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(names) + 2), 4))
    ax.bar(x - 0.2, pq, 0.4, label="PQ")
    ax.bar(x + 0.2, iou, 0.4, label="IoU")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_title(title or f"PQ {100 * report['pq']['pq']:.1f}  mIoU {100 * report['miou']:.1f}  "
                          f"({report['frames']} frames)")
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
