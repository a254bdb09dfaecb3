"""The fleet's report: bag results merged exactly into one score (the evaluators' accumulators added,
not per-bag scores averaged), per bag and per group rows, the slowest stages; report.json and a
self-contained report.html (with the confusion matrix); and the gate against an earlier report."""
import html
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..atomic import atomic_path, write_json
from ..evaluation.evaluator import Evaluator
from ..evaluation.report import row_shares
from ..taxonomy import get_taxonomy
from .worker import ran_as


def _headline(rep: dict, scored: List[dict] = ()) -> dict:
    """rep: an evaluator's report; scored: the bags it merged, whose tracking scores (fleet --stq) merge
    into its AQ and STQ (a bag's own report carries them already)."""
    out = {"pq": rep["pq"]["pq"], "sq": rep["pq"]["sq"], "rq": rep["pq"]["rq"], "pq_things": rep["pq_things"]["pq"],
           "pq_stuff": rep["pq_stuff"]["pq"], "miou": rep["miou"], "pixel_accuracy": rep["pixel_accuracy"]}
    tracking = rep.get("tracking") or merged_tracking(scored, rep["miou"])
    if tracking:
        out.update(stq=tracking["stq"], aq=tracking["aq"], tracks=tracking["tracks"])
    return out


def merged_tracking(results: List[dict], miou: float) -> Optional[dict]:
    """AQ over every labelled track of the bags (each bag's sequences are its own), STQ with their mIoU."""
    parts = [r["metrics"]["tracking"] for r in results if (r.get("metrics") or {}).get("tracking")]
    if not parts:
        return None
    tracks = sum(t["tracks"] for t in parts)
    aq = sum(t["aq"] * t["tracks"] for t in parts) / tracks if tracks else 0.0
    return {"aq": aq, "stq": float(np.sqrt(aq * miou)), "tracks": tracks}


def merged(results: List[dict], taxonomy: str) -> Evaluator:
    ev = Evaluator(get_taxonomy(taxonomy))
    for r in results:
        if r.get("ok") and r.get("scores"):
            ev.merge_state(r["scores"])
    return ev


def ran_as_counts(ok: List[dict]) -> Dict[str, int]:
    """How many bags each way of running the network scored (results of older releases: backend and
    precision alone)."""
    counts: Dict[str, int] = defaultdict(int)
    for r in ok:
        counts[r.get("ran_as") or ran_as(r.get("backend", "?"), r.get("precision", "?"))] += 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def mixed_arithmetic(report: dict) -> str:
    """'' when every bag ran the network the same way; else one line saying how they differed: the fleet's
    score then merges two arithmetics (int8 and fp32, or 7- and 8-bit int8 weights), close but not one model's."""
    counts = report.get("ran_as") or {}
    if len(counts) < 2:
        return ""
    ways = ", ".join(f"{way} ({n} bag{'s' if n > 1 else ''})" for way, n in counts.items())
    return (f"the bags ran the network in {len(counts)} ways: {ways}; the workers' machines differ (backend "
            f"installed, CPU int8 support): pass --backend and --precision to score every bag the same way")


def build_report(results: List[dict], settings: dict) -> dict:
    """results: the bags' results with their 'bag' and 'tag', in any order: they are taken in the order of their
    bags' paths, so the report is the same to the last bit however the workers finished (floating-point sums
    in another order differ in the last digit, and a rerun that keeps bags merges them in another order)."""
    results = sorted(results, key=lambda r: str(r["bag"]))
    ok = [r for r in results if r.get("ok")]
    scored = [r for r in ok if r.get("scores")]
    taxonomy = scored[0]["scores"]["taxonomy"] if scored else None
    fleet = merged(scored, taxonomy).report() if scored else None
    groups: Dict[str, List[dict]] = defaultdict(list)
    for r in scored:
        groups[r["tag"]].append(r)
    stages: Dict[str, List[float]] = defaultdict(list)
    for r in ok:
        for stage, values in r["stage_ms"].items():
            stages[stage] += values
    latency = {s: {p: float(np.percentile(v, int(p[1:]))) for p in ("p50", "p90", "p99")}
               for s, v in stages.items() if v}
    return {
        "settings": settings,
        "bags_total": len(results), "bags_scored": len(scored), "frames": sum(r["frames"] for r in ok),
        "frames_scored": sum(r["evaluated"] for r in ok),
        "failed": [{"bag": r["bag"], "error": r["error"]} for r in results if not r.get("ok")],
        "ran_as": ran_as_counts(ok),
        "fleet": fleet,
        "headline": _headline(fleet, scored) if fleet else None,
        "groups": {tag: {"bags": len(rs), "frames": sum(r["evaluated"] for r in rs),
                         **_headline(merged(rs, taxonomy).report(), rs)} for tag, rs in sorted(groups.items())},
        "bags": [{"bag": r["bag"], "tag": r["tag"], "frames": r["frames"], "scored": r["evaluated"],
                  "fps": r["frames"] / r["seconds"] if r["seconds"] else 0.0, "notes": "; ".join(r.get("notes", [])),
                  "node": r.get("node", ""),  # how the node on the car fared (recorded_health.troubles)
                  "node_ran": r.get("node_ran", ""),  # and which model and weights it ran
                  "ran_as": r.get("ran_as", ""),  # how this replay's worker ran the network
                  **(_headline(r["metrics"]) if r.get("metrics") else {})} for r in ok],
        "latency_ms": dict(sorted(latency.items(), key=lambda kv: -kv[1]["p50"])),  # slowest first
        "worst_frames": _worst_frames(scored, taxonomy),
    }


def _worst_frames(results: List[dict], taxonomy, keep: int = 3) -> Dict[str, List[dict]]:
    """Per class name, the fleet's `keep` frames of lowest IoU for it, with their bag and stamp."""
    if not taxonomy:
        return {}
    tax = get_taxonomy(taxonomy)
    out = {}
    for cid in sorted(tax.by_id):
        frames = [{"bag": r["bag"], "stamp": stamp, "iou": iou, "thumbnail": thumb}
                  for r in results for iou, stamp, thumb in r.get("worst_frames", {}).get(str(cid), [])]
        if frames:
            out[tax.name_of(cid)] = sorted(frames, key=lambda f: f["iou"])[:keep]
    return out


def compare(report: dict, baseline: dict, max_drop: float) -> List[str]:
    """What lost more than `max_drop` PQ points against the baseline: the fleet, a group, a class; and, where
    both reports scored tracking (fleet --stq), more than `max_drop` STQ points: the fleet, a group.

    Missing evidence is a loss too, never a pass: a fleet that scored nothing where the baseline scored,
    and a bag the baseline scored that this run replayed and could not score (it failed, or none of its
    frames met ground truth), named with its reason. A bag this run was not given is not judged (a
    fleet may be run on part of the baseline's bags)."""
    losses = []
    if baseline.get("headline") and not report.get("headline"):
        losses.append(f"fleet: no frame scored (the baseline scored {baseline.get('frames_scored', '?')}, "
                      f"PQ {100 * baseline['headline']['pq']:.1f})")
    def same(bag):  # a bag given relative in one run and absolute in the other is the same bag
        return os.path.realpath(bag)

    now_bags = {same(b["bag"]): b for b in report.get("bags", [])}
    now_failed = {same(f["bag"]): f["error"] for f in report.get("failed", [])}
    for before in baseline.get("bags", []):
        bag = same(before["bag"])
        if not before.get("scored") or (bag not in now_bags and bag not in now_failed):
            continue
        if bag in now_failed:
            losses.append(f"bag {bag}: scored on {before['scored']} frames in the baseline, failed now "
                          f"({now_failed[bag]})")
        elif not now_bags[bag].get("scored"):
            losses.append(f"bag {bag}: scored on {before['scored']} frames in the baseline, on none now")

    def check(what, now, before, metric="PQ"):
        if now is not None and before is not None and 100 * (before - now) > max_drop:
            losses.append(f"{what}: {metric} {100 * before:.1f} -> {100 * now:.1f} ({100 * (now - before):+.1f})")

    rows = [("fleet", report.get("headline"), baseline.get("headline"))] + [
        (f"group {tag}", g, baseline["groups"][tag]) for tag, g in report.get("groups", {}).items()
        if tag in baseline.get("groups", {})]
    for what, now, before in rows:
        if now and before:
            check(what, now["pq"], before["pq"])
            check(what, now.get("stq"), before.get("stq"), "STQ")
    now_classes = (report.get("fleet") or {}).get("per_class", {})
    before_classes = (baseline.get("fleet") or {}).get("per_class", {})
    for cid, entry in now_classes.items():
        before = before_classes.get(str(cid)) or before_classes.get(cid)
        if before and "pq" in entry and "pq" in before:
            check(f"class {entry['name']}", entry["pq"], before["pq"])
    return losses


def _pct(v) -> str:
    return "" if v is None or v != v else f"{100 * v:.1f}"


def _table(rows: List[dict], columns: List[tuple], table_id: str) -> str:
    head = "".join(f"<th onclick=\"sortBy('{table_id}', {i})\">{html.escape(t)}</th>" for i, (t, _, _) in
                   enumerate(columns))
    body = []
    for r in rows:
        cells = []
        for _, key, kind in columns:
            v = r.get(key)
            text = _pct(v) if kind == "pct" else (f"{v:.1f}" if kind == "num" and v is not None else html.escape(str(v)))
            cells.append(f"<td data-v=\"{html.escape(str(v if v is not None else ''))}\">{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table id=\"{table_id}\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


METRIC_COLUMNS = [("PQ", "pq", "pct"), ("SQ", "sq", "pct"), ("RQ", "rq", "pct"), ("PQ things", "pq_things", "pct"),
                  ("PQ stuff", "pq_stuff", "pct"), ("mIoU", "miou", "pct")]


def render_html(report: dict) -> str:
    h = report.get("headline") or {}
    columns = METRIC_COLUMNS + ([("STQ", "stq", "pct"), ("AQ", "aq", "pct")] if "stq" in h else [])
    tracking = (f" &middot; STQ {_pct(h['stq'])} (AQ {_pct(h['aq'])}, {h['tracks']} labelled tracks)"
                if "stq" in h else "")
    classes = [{"class": e["name"], "kind": "thing" if e["isthing"] else "stuff", "pq": e.get("pq"),
                "sq": e.get("sq"), "rq": e.get("rq"), "iou": e.get("iou")}
               for e in (report.get("fleet") or {}).get("per_class", {}).values()]
    groups = [{"group": tag, **g} for tag, g in report["groups"].items()]
    stages = [{"stage": s, **v} for s, v in report["latency_ms"].items()]
    failed = "".join(f"<li><b>{html.escape(f['bag'])}</b>: {html.escape(f['error'])}</li>" for f in report["failed"])
    reference = ((report.get("settings") or {}).get("replay") or {}).get("gt_topic")  # fleet --gt-topic
    against = f" &middot; against {html.escape(reference)}" if reference else ""
    mixed = mixed_arithmetic(report)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>panoptic_node fleet report</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right}} th{{cursor:pointer;background:#eee}}
td:first-child,th:first-child{{text-align:left}} .big{{font-size:1.4em}}
figure{{display:inline-block;margin:4px}} figcaption{{font-size:.8em}}</style></head><body>
<h1>Fleet report</h1>
<p class="big" id="headline">PQ {_pct(h.get('pq'))} (things {_pct(h.get('pq_things'))}, stuff {_pct(h.get('pq_stuff'))})
&middot; mIoU {_pct(h.get('miou'))}{tracking} &middot; {report['bags_scored']} of {report['bags_total']} bags,
{report['frames_scored']} frames scored{against}</p>
{f'<p id="mixed"><b>{html.escape(mixed)}</b></p>' if mixed else ''}
<h2>Bags</h2>{_table(report['bags'], [("bag", "bag", "str"), ("group", "tag", "str"), ("frames", "frames", "str"),
                                      ("scored", "scored", "str"), ("ran as", "ran_as", "str"),
                                      ("frames/s", "fps", "num")] + columns
                     + [("node on the car", "node", "str"), ("it ran", "node_ran", "str"),
                        ("notes", "notes", "str")], "bags")}
<h2>Groups</h2>{_table(groups, [("group", "group", "str"), ("bags", "bags", "str"), ("frames", "frames", "str")]
                       + columns, "groups")}
<h2>Classes</h2>{_table(classes, [("class", "class", "str"), ("kind", "kind", "str"), ("PQ", "pq", "pct"),
                                  ("SQ", "sq", "pct"), ("RQ", "rq", "pct"), ("IoU", "iou", "pct")], "classes")}
<h2>Where each class's pixels went (% of the ground-truth class, rows)</h2>
{_confusion_table((report.get('fleet') or {}).get('confusion'))}
<h2>Slowest stages (ms per frame)</h2>{_table(stages, [("stage", "stage", "str"), ("p50", "p50", "num"),
                                                       ("p90", "p90", "num"), ("p99", "p99", "num")], "stages")}
<h2>Worst frames per class</h2><p>frame | prediction | ground truth</p>
<div id="gallery">{_gallery(report.get('worst_frames', {}))}</div>
<h2>Bags not scored</h2><ul id="failed">{failed or '<li>none</li>'}</ul>
<script>
function sortBy(id, col) {{
  const body = document.getElementById(id).tBodies[0];
  const rows = Array.from(body.rows);
  const asc = body.dataset.col == col && body.dataset.dir != "asc";
  rows.sort((a, b) => {{
    const x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
    const nx = parseFloat(x), ny = parseFloat(y);
    const c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
    return asc ? c : -c;
  }});
  rows.forEach(r => body.appendChild(r));
  body.dataset.col = col; body.dataset.dir = asc ? "asc" : "desc";
}}
</script></body></html>
"""


def _confusion_table(confusion: Optional[dict]) -> str:
    """The fleet's confusion matrix, each row normalised, as a table shaded by share (the same reading
    as replay's --confusion picture); reports from before it existed have none."""
    if not confusion:
        return "<p>not in this report</p>"
    names = [html.escape(n) for n in confusion["classes"]]
    head = "".join(f"<th>{n}</th>" for n in names + ["void"])
    rows = []
    for name, shares in zip(names, row_shares(confusion["matrix"])):
        cells = "".join(f'<td style="background:rgba(8,48,107,{v:.2f});color:{"#fff" if v > 0.5 else "#000"}">'
                        f'{100 * v:.0f}</td>' if v >= 0.005 else "<td></td>" for v in shares)
        rows.append(f"<tr><td>{name}</td>{cells}</tr>")
    return (f'<table id="confusion"><thead><tr><th>ground truth \\ predicted</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _gallery(worst: Dict[str, List[dict]]) -> str:
    parts = []
    for name, frames in worst.items():
        figures = "".join(
            f"<figure><img src=\"data:image/jpeg;base64,{f['thumbnail']}\" alt=\"{html.escape(name)}\">"
            f"<figcaption>{html.escape(Path(f['bag']).name)} @ {f['stamp']}: IoU {100 * f['iou']:.1f}</figcaption>"
            f"</figure>" for f in frames)
        parts.append(f"<section class=\"class\"><h3>{html.escape(name)}</h3>{figures}</section>")
    return "".join(parts) or "<p>no scored frames</p>"


def write_report(report: dict, out: Path) -> None:
    write_json(report, Path(out) / "report.json", indent=1)
    with atomic_path(Path(out) / "report.html") as tmp:
        tmp.write_text(render_html(report))


def load_report(path) -> dict:
    """A baseline to gate on: a report without a fleet score would let every run pass unchecked."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"baseline '{path}' is not a readable fleet report.json ({e})") from None
    headline = report.get("headline") if isinstance(report, dict) else None
    if not isinstance(headline, dict) or not isinstance(headline.get("pq"), (int, float)):
        raise ValueError(f"baseline '{path}' holds no fleet PQ (no 'headline' with 'pq'); expected the report.json "
                         f"of a fleet run that scored frames")
    return report
