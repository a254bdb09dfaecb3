"""Compare training runs on their held-out evaluations, and judge each against a baseline by a rule
fixed before the runs: adopt a change when its mean mIoU over the late evaluations gains at least
`min_miou_gain` points and its last PQ is not lower by more than `max_pq_drop`.

A run is the folder `panoptic-node train --out` wrote: `history.json` (every epoch; held-out scores
every few), and `settings.json` (or, for runs from before it, `checkpoint.pth`), whose recorded settings
say what the recipe was and which drives were held out; the two JSON files keep a run comparable after
its checkpoints are deleted (models/experiments/runs/ holds such archived runs). Runs validated on
different drives, or scored with different post-processing, are not compared: their numbers measure
different things.

On a new drive one run's numbers move by several points from seed to seed (the dusk drive's sky), so
runs of one recipe that differ only in their seed can be pooled: judged on their mean, shown with
their spread.
"""
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..model.config import ModelConfig, PostprocessConfig, network_record


class RunError(ValueError):
    pass


UNRECORDED = "unrecorded"


def _flat(d: dict, prefix: str) -> dict:
    flat = {}
    for k, v in d.items():
        flat.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return flat


@dataclass
class Run:
    name: str
    history: list
    settings: Optional[dict] = None          # None: no settings.json and no checkpoint (deleted)
    evaluations: list = field(default_factory=list)

    def full_settings(self) -> dict:
        """The recorded settings, a setting the run predates filled in as it was then: off; the network
        one key per value ('network.input.normalization'), or 'network': 'unrecorded' for a run from before
        runs recorded it (its config's name alone may stand for another network now)."""
        from .train import ADDED_SETTINGS
        settings = {**ADDED_SETTINGS, **(self.settings or {})}
        network = settings.pop("network", None)
        if network:  # a key added to configs since takes its default, which is what the run trained (as network_config)
            settings.update({**_flat(network_record(ModelConfig()), "network."), **_flat(network, "network.")})
        else:
            settings["network"] = UNRECORDED
        return settings

    @property
    def planned_epochs(self) -> Optional[int]:
        return (self.settings or {}).get("epochs")

    @property
    def last_epoch(self) -> int:
        return self.history[-1]["epoch"]

    @property
    def finished(self) -> bool:
        return self.planned_epochs is None or self.last_epoch >= self.planned_epochs

    @property
    def stopped(self) -> Optional[dict]:
        """How `train --stop-below` ended the run early, as its last history entry records it (None: it did not;
        runs from before the record was kept do not say)."""
        return self.history[-1].get("stopped")

    def window(self, from_epoch: int, last: Optional[int] = None) -> list:
        """The evaluations a rule judges: from `from_epoch` on; or, given `last`, the run's last `last`
        ones (runs of different schedules each judged on their own end), none when it has fewer."""
        if last:
            return self.evaluations[-last:] if len(self.evaluations) >= last else []
        return [e for e in self.evaluations if e["epoch"] >= from_epoch]

    def late_mean(self, key: str, from_epoch: int, last: Optional[int] = None) -> Optional[float]:
        values = [e["val"][key] for e in self.window(from_epoch, last)]
        return float(np.mean(values)) if values else None

    def late_class_means(self, from_epoch: int, last: Optional[int] = None) -> dict:
        """Each class's IoU, the mean over the same evaluations as late_mean's (one evaluation of one class
        moves by points); {} when those evaluations did not record per-class IoU."""
        window = [e["val"].get("iou") for e in self.window(from_epoch, last)]
        if not window or not all(isinstance(w, dict) for w in window):
            return {}
        return {c: float(np.mean([w[c] for w in window])) for c in window[0] if all(c in w for w in window)}


@dataclass
class PooledRun(Run):
    """Runs of one recipe with different seeds, as one run: at each epoch every member has evaluated,
    the mean of their held-out scores."""
    members: list = field(default_factory=list)

    @property
    def last_epoch(self) -> int:
        return min(m.last_epoch for m in self.members)

    @property
    def finished(self) -> bool:
        return all(m.finished for m in self.members)

    @property
    def stopped(self) -> Optional[dict]:
        return next((m.stopped for m in self.members if m.stopped), None)

    def spread(self, value_of) -> Optional[tuple]:
        """(lowest, highest) of `value_of(member)` over the members; None for a single run or when a
        member has no such value (None)."""
        values = [value_of(m) for m in self.members]
        return None if len(values) < 2 or None in values else (min(values), max(values))


def pool_seeds(runs: List[Run]) -> List[PooledRun]:
    """The runs grouped by recipe: settings equal but for the seed, scored with the same post-processing
    (a run without its checkpoint stays alone, its recipe unknown). Groups in the order of their first run."""
    groups = {}
    for run in runs:
        groups.setdefault(_recipe_key(run), []).append(run)
    return [_pooled(members) for members in groups.values()]


def _recipe_key(run: Run) -> str:
    if run.settings is None:
        return f"unknown recipe: {run.name}"
    settings = _without_seed(run.full_settings())
    post = recorded_postprocess(run) if run.evaluations else None
    return json.dumps([settings, post], sort_keys=True, default=str)


def _without_seed(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != "seed"}


def _pooled(members: List[Run]) -> PooledRun:
    by_epoch = [{e["epoch"]: e["val"] for e in m.evaluations} for m in members]
    evaluations = []
    for epoch in sorted(set.intersection(*(set(b) for b in by_epoch))):
        vals = [b[epoch] for b in by_epoch]
        mean = {k: float(np.mean([v[k] for v in vals])) for k in vals[0]
                if all(isinstance(v.get(k), (int, float)) and not isinstance(v.get(k), bool) for v in vals)}
        if all(isinstance(v.get("iou"), dict) for v in vals):  # per class, as the members' mIoU
            mean["iou"] = {c: float(np.mean([v["iou"][c] for v in vals])) for c in vals[0]["iou"]
                           if all(c in v["iou"] for v in vals)}
        if "postprocess" in vals[0]:
            mean["postprocess"] = vals[0]["postprocess"]
        evaluations.append({"epoch": epoch, "val": mean})
    settings = None if members[0].settings is None else _without_seed(members[0].settings)
    name = " + ".join(m.name for m in members) + f" ({len(members)} run{'s' if len(members) > 1 else ''})"
    return PooledRun(name, members[0].history, settings, evaluations, members)


def load_run(folder) -> Run:
    """The run in `folder`; one RunError line when it is not a training run with held-out scores."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"'{folder}' is not a folder; expected a run folder `panoptic-node train --out` wrote")
    path = folder / "history.json"
    if not path.exists():
        raise RunError(f"'{folder}' has no history.json; expected a folder `panoptic-node train --out` wrote")
    history = _read_json(path, "the history")
    if not isinstance(history, list) or not all(isinstance(e, dict) and "epoch" in e for e in history):
        raise RunError(f"'{path}' is not a training history; expected a list of epochs")
    evaluations = [e for e in history if isinstance(e.get("val"), dict)]
    run = Run(folder.name, history, _settings(folder), evaluations)
    if not evaluations and (run.finished or (run.settings or {}).get("val_drives") == []):
        raise RunError(f"'{folder}' has no held-out evaluation (trained without validation drives?); "
                       f"nothing to compare it by")
    return run


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"'{path}' is not readable JSON ({e}); expected {what} a training run writes")


def _settings(folder: Path) -> Optional[dict]:
    """The run's recorded settings: settings.json, else its checkpoint's (runs from before settings.json);
    None when neither is there (a recipe nobody can tell any more)."""
    from ..model.config import network_config
    from .train import read_training_checkpoint, run_record
    path = folder / "settings.json"
    if path.is_file():
        settings = _read_json(path, "the settings")
        if not isinstance(settings, dict):
            raise RunError(f"'{path}' is not a run's settings; expected a JSON object of option: value")
        return settings
    checkpoint = folder / "checkpoint.pth"
    if not checkpoint.is_file():
        return None
    state = read_training_checkpoint(checkpoint)
    settings, trained_as = state.get("settings"), state.get("model_config")
    if settings is not None and trained_as is not None:  # checkpoints keep the config since 2026-12-04
        settings = run_record(settings, network_config(trained_as))
    return settings


def recipe_difference(run: Run, baseline: Run) -> str:
    """The settings in which `run` differs from `baseline`, e.g. 'copy_paste 0.5, seed 1'."""
    if run.settings is None or baseline.settings is None:
        return "settings unknown (no settings.json or checkpoint.pth)"
    a, b = run.full_settings(), baseline.full_settings()
    diff = []
    if (a.get("network") == UNRECORDED) != (b.get("network") == UNRECORDED):  # not told value by value
        diff.append("network unrecorded" if a.get("network") == UNRECORDED else "network unrecorded in the baseline")
        a, b = ({k: v for k, v in d.items() if not k.startswith("network")} for d in (a, b))
    diff += [f"{k} {_show(a.get(k))}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(diff) or "same recipe"


def _show(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def why_not_comparable(run: Run, baseline: Run) -> Optional[str]:
    if run.settings and baseline.settings:
        a, b = run.settings.get("val_drives"), baseline.settings.get("val_drives")
        if a != b:
            return f"held out {_show(a)}, the baseline {_show(b)}"
    a, b = (recorded_postprocess(r) for r in (run, baseline))
    if a is not None and b is not None and a != b:
        return "scored with other post-processing than the baseline"
    return None


def recorded_postprocess(run: Run) -> Optional[dict]:
    """The post-processing the run's last evaluation was scored with; a setting added after the run was
    written is filled in with its default (the run was scored without it), so it does not tell runs apart."""
    recorded = run.evaluations[-1]["val"].get("postprocess")
    if recorded is None:
        return None
    return {**asdict(PostprocessConfig()), **recorded}


def window_name(from_epoch: int, last: Optional[int] = None) -> str:
    return f"the last {last} evaluations" if last else f"epoch {from_epoch} on"


def outside_window(runs: List[Run], from_epoch: int, last: Optional[int] = None) -> str:
    """Which of the runs evaluated, but never in the window, and what compares them instead ('' when none):
    a 36-epoch baseline has nothing from epoch 48 on, and saying only 'no evaluations' hides whose."""
    missing = [r for r in runs if r.evaluations and not r.window(from_epoch, last)]
    if not missing:
        return ""
    said = ", ".join(f"{r.name} ({len(r.evaluations)} evaluations, the last at epoch {r.evaluations[-1]['epoch']})"
                     for r in missing)
    return f"{said}; --last N judges each run on its own last N evaluations"


def verdict(run: Run, baseline: Run, from_epoch: int, min_miou_gain: float, max_pq_drop: float,
            last: Optional[int] = None) -> str:
    """'adopt', or why not, in a few words."""
    if run is baseline:
        return "baseline"
    if not run.evaluations:
        return f"no held-out evaluation yet (epoch {run.last_epoch})"
    why = why_not_comparable(run, baseline)
    if why:
        return f"not comparable: {why}"
    if run.stopped:  # its own rule judged it; the window it never reached cannot
        rule = run.stopped
        unreachable = ", out of reach" if rule.get("when") == "unreachable" else ""
        return (f"not adopted: stopped by its rule at epoch {run.last_epoch} (mean mIoU {rule['mean_miou']:.1f} from "
                f"epoch {rule['stop_from']}, under {rule['stop_below']:.1f}{unreachable})")
    if not run.finished:
        return f"unfinished (epoch {run.last_epoch} of {run.planned_epochs})"
    if not baseline.finished:
        return f"the baseline is unfinished (epoch {baseline.last_epoch} of {baseline.planned_epochs})"
    outside = outside_window([baseline, run], from_epoch, last)
    if outside:
        return f"no evaluations for the mean over {window_name(from_epoch, last)}: {outside}"
    gain = _points(run.late_mean("miou", from_epoch, last)) - _points(baseline.late_mean("miou", from_epoch, last))
    drop = _points(baseline.evaluations[-1]["val"]["pq"]) - _points(run.evaluations[-1]["val"]["pq"])
    # histories written before the post-processing was recorded: say that their PQ may not compare
    caveat = ("" if all(r.evaluations[-1]["val"].get("postprocess") for r in (run, baseline))
              else " (post-processing not recorded: PQ may not compare)")
    if gain < min_miou_gain:
        return f"not adopted: mean mIoU {gain:+.1f} (needs {min_miou_gain:+.1f})"
    if drop > max_pq_drop:
        return f"not adopted: PQ {-drop:+.1f} (may fall {max_pq_drop:.1f} at most){caveat}"
    return f"adopt{caveat}"


def _points(x: Optional[float]) -> float:
    return float("nan") if x is None else 100 * x


def table(runs: List[Run], baseline: Run, from_epoch: int, min_miou_gain: float, max_pq_drop: float,
          last: Optional[int] = None) -> str:
    """A markdown table: the last held-out evaluation of each run, its late mean mIoU, its verdict."""
    if not baseline.evaluations:
        raise RunError(f"the baseline '{baseline.name}' has no held-out evaluation yet; nothing to compare against")
    lines = [f"| run | recipe vs {baseline.name} | epoch | PQ | things | stuff | mIoU | mean mIoU over "
             f"{window_name(from_epoch, last)} | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        judged = verdict(run, baseline, from_epoch, min_miou_gain, max_pq_drop, last)
        if not run.evaluations:
            lines.append(f"| {run.name} | {recipe_difference(run, baseline)} | {run.last_epoch} | - | - | - | - | - "
                         f"| {judged} |")
            continue
        final = run.evaluations[-1]
        v = final["val"]
        late = run.late_mean("miou", from_epoch, last)
        def spread(value_of):  # a pooled run's lowest and highest member, after its mean
            return _range(run.spread(value_of) if isinstance(run, PooledRun) else None)
        lines.append(f"| {run.name} | {'-' if run is baseline else recipe_difference(run, baseline)} "
                     f"| {final['epoch']} | {_points(v['pq']):.1f}{spread(lambda m: _last(m, 'pq'))} "
                     f"| {_points(v['pq_things']):.1f} | {_points(v['pq_stuff']):.1f} "
                     f"| {_points(v['miou']):.1f}{spread(lambda m: _last(m, 'miou'))} "
                     f"| {'-' if late is None else f'{_points(late):.1f}'}"
                     f"{spread(lambda m: m.late_mean('miou', from_epoch, last))} | {judged} |")
    return "\n".join(lines)


def per_class_table(runs: List[Run], baseline: Run, from_epoch: int, last: Optional[int] = None) -> str:
    """A markdown table: each class's IoU, the mean over the window the rule's mean mIoU is taken on, for every
    run, and its difference from the baseline's (which classes a recipe moves: one class with one object in a
    drive can move a mean mIoU by a point alone)."""
    means = {r.name: r.late_class_means(from_epoch, last) for r in runs}
    classes = list(dict.fromkeys(c for r in runs for c in means[r.name]))
    outside = outside_window(runs, from_epoch, last)
    if not classes and outside:
        return f"no evaluations over {window_name(from_epoch, last)}: {outside}"
    if not classes:
        return f"no per-class IoU over {window_name(from_epoch, last)} (histories from before it was recorded)"
    base = means[baseline.name]
    lines = [f"| class (IoU, mean over {window_name(from_epoch, last)}) | " + " | ".join(r.name for r in runs) + " |",
             "|---" * (len(runs) + 1) + "|"]
    for c in classes:
        cells = []
        for r in runs:
            value = means[r.name].get(c)
            if value is None:
                cells.append("-")
            elif r is baseline or c not in base:
                cells.append(f"{_points(value):.1f}")
            else:
                cells.append(f"{_points(value):.1f} ({_points(value) - _points(base[c]):+.1f})")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if outside:  # a column of dashes says what, not why
        lines += ["", f"no evaluations over {window_name(from_epoch, last)}: {outside}"]
    return "\n".join(lines)


def _last(run: Run, key: str) -> Optional[float]:
    return run.evaluations[-1]["val"][key] if run.evaluations else None


def _range(spread: Optional[tuple]) -> str:
    """' (28.2-34.4)': the members' lowest and highest, after a pooled run's mean."""
    return "" if spread is None else f" ({_points(spread[0]):.1f}-{_points(spread[1]):.1f})"


def y_range(runs: List[Run], key: str, from_epoch: int) -> tuple:
    """The chart's y range: every value from half-way to the rule's window on, with a margin; a run's
    slow start below it is cut off rather than squeezing the curves the rule judges into a band."""
    values = [_points(e["val"][key]) for r in runs for e in r.evaluations]
    later = [_points(e["val"][key]) for r in runs for e in r.evaluations if e["epoch"] >= from_epoch // 2]
    return min(later or values) - 2.0, max(values) + 1.0


def curves_chart(runs: List[Run], path, from_epoch: int, baseline: Optional[Run] = None,
                 last: Optional[int] = None) -> Path:
    """Held-out mIoU and PQ against the epoch, one line per run (the baseline's black and thick); the
    rule's window shaded (with `last`: from the earliest epoch any run's last evaluations start at)."""
    if last:
        from_epoch = min((r.window(from_epoch, last)[0]["epoch"] for r in runs if r.window(from_epoch, last)),
                         default=from_epoch)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..evaluation.report import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    for ax, key, title in ((axes[0], "miou", "held-out mIoU"), (axes[1], "pq", "held-out PQ")):
        others = [r for r in runs if r is not baseline]
        for run in runs:
            # matplotlib has ten colours: the runs after them are dashed, so no two lines look alike
            style = (dict(color="black", linewidth=2.5, zorder=3) if run is baseline
                     else dict(linestyle="--" if others.index(run) >= 10 else "-"))
            ax.plot([e["epoch"] for e in run.evaluations], [_points(e["val"][key]) for e in run.evaluations],
                    marker=".", label=run.name + (" (baseline)" if run is baseline else ""), **style)
        ax.axvspan(from_epoch, max(r.last_epoch for r in runs), color="0.9", zorder=0)
        ax.set_ylim(*y_range(runs, key, from_epoch))
        ax.set_xlabel("epoch")
        ax.set_ylabel("%")
        ax.set_title(title)
    fig.tight_layout(rect=(0, 0, 0.84, 1))  # the legend beside the plots, not over the curves
    fig.legend(*axes[1].get_legend_handles_labels(), loc="center right", fontsize=8)
    return save_figure(fig, path)
