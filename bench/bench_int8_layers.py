"""Where int8 costs accuracy: the CPU default's int8 graph with one part of the network left float at a
time, scored on the same CamVid frames as fp32 and the all-int8 graph, in one run.

    python bench/bench_int8_layers.py --weights runs/fold1TP_dusk/last.pth --drives 0016E5 --dusk 1.5,0.75

--dusk GAMMA,GAIN darkens every frame as dusk darkens a street (training's `--photometric dusk` at a fixed
strength; labels unchanged): a part that costs accuracy on dark frames can be found on frames of the training
drives, and the drive held out of training is scored once, with the choice made.

The parts are the graph's own modules: the backbone in four runs of consecutive blocks, the FPN, the input
projection, the transformer's encoder and decoder, the heads. A part whose float row wins back most of the
gap between int8 and fp32 is the one to keep float (`panoptic-node calibrate --keep-float PREFIX ...`, which
every int8 graph made from the scales then honours) or to calibrate differently. `--backbone-runs 17` gives
Lite0's stem and every block a row of its own; `--float A,B` scores a set of modules float together instead of
the per-part rows (a loss spread over several blocks shows in no single row). The weights need their scales
beside them; calibrate on frames of the training drives, never on the drive scored here.
"""
import argparse
import tempfile
from typing import Dict, List


def parts_of(model, backbone_runs: int = 4) -> Dict[str, List[str]]:
    """{part name: node-name prefixes} of an exported detect graph (onnx.ModelProto), in graph order."""
    prefixes = []
    for n in model.graph.node:
        if n.op_type in ("Conv", "MatMul", "Gemm") and n.name.startswith("/"):
            p = "/".join(n.name.split("/")[:3]) if n.name.startswith(("/backbone/", "/transformer/")) else \
                "/" + n.name.split("/")[1]
            if p not in prefixes:
                prefixes.append(p)
    backbone = [p for p in prefixes if p.startswith("/backbone/")]
    parts = {}
    per_run = -(-len(backbone) // backbone_runs)
    for i in range(0, len(backbone), per_run):
        run = backbone[i:i + per_run]
        ends = [run[0].split('/')[-1], run[-1].split('/')[-1]]
        parts[f"backbone {ends[0]}" + (f"..{ends[1]}" if len(run) > 1 else "")] = run
    fpn = [p for p in prefixes if p.startswith(("/lateral", "/smooth"))]
    heads = [p for p in prefixes if p.startswith(("/class_embed", "/bbox_embed"))]
    if fpn:
        parts["fpn"] = fpn
    for p in prefixes:
        if p not in backbone and p not in fpn and p not in heads:
            parts[p.strip("/")] = [p]
    if heads:
        parts["heads"] = heads
    return parts


def darkened(sample, gamma: float, gain: float):
    """The sample with its frame darkened as training's dusk transform does (augment.py), labels as they were."""
    import dataclasses

    import numpy as np

    from panoptic_node.training.augment import darken_as_dusk
    rgb = np.clip(darken_as_dusk(sample.rgb.astype(np.float32), gamma, gain), 0, 255).astype(np.uint8)
    return dataclasses.replace(sample, rgb=rgb)


def main():
    import bench_int8  # its sibling: the script's own folder is on sys.path
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_int8.add_model_and_frames_args(parser)
    parser.add_argument("--dusk", help="GAMMA,GAIN: darken every frame (e.g. 1.5,0.75, 0016E5 made to look like "
                                       "the dusk drive 0001TP)")
    parser.add_argument("--backbone-runs", type=int, default=4,
                        help="rows for the backbone: its stem and blocks in this many runs of consecutive blocks "
                             "(17 for Lite0: one row each)")
    parser.add_argument("--float", action="append", default=[], metavar="PREFIX[,PREFIX...]",
                        help="instead of one row per part, a row with these modules float together (e.g. "
                             "/backbone/_blocks.0,/backbone/_blocks.1); repeatable")
    args = parser.parse_args()
    if args.backbone_runs < 1:
        parser.error(f"--backbone-runs {args.backbone_runs}: expected a count of 1 or more")
    dusk = None
    if args.dusk:
        try:
            dusk = tuple(float(v) for v in args.dusk.split(","))
        except ValueError:
            dusk = ()
        if len(dusk) != 2 or not (dusk[0] > 0 and 0 < dusk[1] <= 1):
            parser.error(f"--dusk {args.dusk}: expected GAMMA,GAIN with GAMMA > 0 and 0 < GAIN <= 1, e.g. 1.5,0.75")
    import os

    import onnx
    import torch

    from panoptic_node.inference.backends import check_threads
    check_threads(args.threads, "--threads")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from panoptic_node.evaluation.evaluator import score_samples
    from panoptic_node.inference.backends import int8_scales_for
    from panoptic_node.inference.graph_cache import cached_graph
    from panoptic_node.inference.graph_per_shape import GraphPerShape
    from panoptic_node.inference.openvino_backend import OpenVinoBackend
    from panoptic_node.inference.pipeline import Pipeline
    from panoptic_node.model.config import load_config
    from panoptic_node.quantize import float_nodes_of
    from panoptic_node.training.data import CamVid, find_camvid

    cfg = load_config(args.model)
    root = find_camvid(args.camvid)
    data = CamVid(root, drives=args.drives.split(",")) if args.drives else CamVid(root, "val")
    # the default's own int8 settings on this CPU (7-bit weights and float matrix products without VNNI)
    int8 = int8_scales_for(cfg, args.weights, "openvino", "int8", log=None)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["PANOPTIC_NODE_GRAPH_CACHE"] = cache  # graphs made fresh, as on a new machine
        model = onnx.load(str(cached_graph(cfg, args.weights, log=lambda m: None)))
        runs = [("fp32", None), ("int8, all of it", {**int8, "float_nodes": []})]
        if args.float:
            chosen = [[p for p in group.split(",") if p] for group in args.float]
            for group in chosen:
                try:
                    float_nodes_of(model, group)  # a prefix naming no module is refused before any scoring
                except ValueError as e:
                    parser.error(f"--float {','.join(group)}: {e}")
            runs += [(f"int8, {' + '.join(p.split('/')[-1] for p in group)} float", {**int8, "float_nodes": group})
                     for group in chosen]
        else:
            parts = parts_of(model, backbone_runs=args.backbone_runs)
            runs += [(f"int8, {name} float", {**int8, "float_nodes": prefixes}) for name, prefixes in parts.items()]
        # frames are read after the --float check, so a mistyped prefix is refused at once
        samples = data.load_all()
        if dusk:
            samples = [darkened(s, *dusk) for s in samples]
        rows = []
        for name, settings in runs:
            graphs = GraphPerShape(cfg, args.weights, lambda p: OpenVinoBackend(p, cfg), log=lambda m: None,
                                   int8=settings)
            ev, _ = score_samples(Pipeline(cfg, graphs), samples, progress=name)
            rep = ev.report()
            rows.append((name, 100 * rep["pq"]["pq"], 100 * rep["pq_things"]["pq"], 100 * rep["miou"]))
    fp32, full = rows[0][1], rows[1][1]
    print(f"{len(samples)} frames ({'drives ' + args.drives if args.drives else 'CamVid val'}"
          f"{f', darkened gamma {dusk[0]:g} gain {dusk[1]:g}' if dusk else ''}), "
          f"weights {args.weights or 'shipped'}, {int8['int8_weight_bits']}-bit weights")
    print(f"{'graph':46} {'PQ':>5} {'things':>6} {'mIoU':>5} {'PQ vs all-int8':>14} {'gap won back':>12}")
    for name, pq, things, miou in rows:
        # a share of a gap under half a point is noise, not a finding
        back = f"{100 * (pq - full) / (fp32 - full):11.0f}%" if abs(fp32 - full) >= 0.5 else f"{'-':>12}"
        print(f"{name:46} {pq:5.1f} {things:6.1f} {miou:5.1f} {pq - full:+14.1f} {back}")


if __name__ == "__main__":
    main()
