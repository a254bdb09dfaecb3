"""Evaluation outputs people look at: a per-class bar chart (PQ and IoU), the confusion matrix (which
class each class's pixels were taken for), a drive's timeline (each frame's PQ and mIoU along it) and a
Markdown table of several runs' IoU per class. The JSON report goes through atomic.write_json."""
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


def row_shares(matrix):
    """Each ground-truth class's pixels as shares of its row, as an array (a class with no pixels: a
    row of zeros)."""
    import numpy as np
    m = np.asarray(matrix, np.float64)
    totals = m.sum(1, keepdims=True)
    return np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)


def confusion_chart(report: dict, path, title: str = "") -> Path:
    """The report's confusion matrix as a heat map, each row normalised: where the pixels of a class
    went (the diagonal is what was right; the last column, what was left void). Percentages are
    written in the cells when there are few enough classes to read them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = report["confusion"]["classes"]
    shares = row_shares(report["confusion"]["matrix"])
    n = len(names)
    side = max(5.0, 0.45 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 0.8, side))
    shown = ax.imshow(100 * shares, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(n + 1), names + ["void"], rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted as")
    ax.set_ylabel("ground truth")
    if n <= 30:
        for (row, col), share in np.ndenumerate(shares):
            if share >= 0.005:
                ax.text(col, row, f"{100 * share:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if share > 0.5 else "black")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="% of the ground-truth class's pixels")
    ax.set_title(title or f"where each class's pixels went ({report['frames']} frames)")
    fig.tight_layout()
    return save_figure(fig, path)


def timeline_chart(rows, path, report=None, title: str = "") -> Path:
    """Each scored frame's own PQ and mIoU (evaluation/per_frame.py rows) against its time in the drive,
    the whole drive's scores as dashed lines (`report`), the three frames of lowest PQ marked with their
    stamps: where along a drive the model goes wrong."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = rows[0]["stamp_ns"]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for key, label, colour in (("pq", "PQ", "tab:blue"), ("miou", "mIoU", "tab:orange")):
        points = [((r["stamp_ns"] - t0) / 1e9, r[key]) for r in rows if r[key] is not None]
        if points:
            ax.plot(*zip(*points), marker=".", markersize=4, linewidth=0.8, color=colour, label=f"{label} per frame")
        if report is not None:
            whole = report[key]["pq"] if key == "pq" else report[key]
            ax.axhline(100 * whole, color=colour, linestyle="--", linewidth=1,
                       label=f"{label} of the drive {100 * whole:.1f}")
    from .per_frame import lowest_pq
    for i, r in enumerate(lowest_pq(rows)):  # staggered: the worst frames are often neighbours
        x = (r["stamp_ns"] - t0) / 1e9
        ax.annotate(str(r["stamp_ns"]), (x, r["pq"]), textcoords="offset points", xytext=(0, -12 - 10 * i),
                    ha="center", fontsize=7, color="tab:red")
        ax.plot([x], [r["pq"]], "o", color="tab:red", markersize=5)
    ax.set_xlabel(f"seconds after stamp {t0}")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=4, loc="lower left")
    ax.set_title(title or f"{len(rows)} frames scored one by one; red: lowest PQ (header stamp)")
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


def per_class_iou_table(per_class: dict) -> str:
    """A Markdown table of IoU per class (rows) for several runs (columns): `per_class` maps a run's name to its
    report's "per_class" (class id -> {"name", "iou", ...}), every run of one label set."""
    names = list(per_class)
    rows = ["| class (IoU) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for cid, entry in per_class[names[0]].items():
        rows.append(f"| {entry['name']} | " + " | ".join(f"{100 * per_class[n][cid]['iou']:.1f}" for n in names) + " |")
    return "\n".join(rows)
