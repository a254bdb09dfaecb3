"""The CPU default (int8 graphs made from the weights' shipped scales, on OpenVINO) against fp32 graphs
and torch: PQ, mIoU and time per frame on the same CamVid frames, in one run.

    python bench/bench_int8.py                                    # the shipped model on CamVid val
    python bench/bench_int8.py --weights runs/fold/last.pth --drives 0006R0   # a drive held out of training

On an x86 CPU without VNNI the default's graphs leave the matrix products in float; a fourth row runs the
same 7-bit graph with int8 matrix products, what the default was before (quantize.quantize_int8). Where the
scales keep parts of the network float (`panoptic-node calibrate --keep-float`), a row runs the same scales
with every part int8: what the float parts cost in time and win back in accuracy, measured in the same run.

The weights need their scales beside them (`panoptic-node calibrate --weights W --calib FRAMES`, which
writes W's `.int8.json`); calibrate on frames of the training drives, never on the drive scored here.
"""
import argparse
import statistics
import tempfile


def add_model_and_frames_args(parser) -> None:
    """The weights and the CamVid frames an int8 benchmark scores (also bench_int8_layers.py's)."""
    parser.add_argument("--model", default="street_lite0")
    parser.add_argument("--weights")
    parser.add_argument("--camvid")
    parser.add_argument("--drives", help="score every labelled frame of these drives (default: CamVid val)")
    parser.add_argument("--threads", type=int, default=2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_frames_args(parser)
    args = parser.parse_args()
    import os

    import torch

    from panoptic_node.inference.backends import check_threads
    check_threads(args.threads, "--threads")  # torch's thread pool crashes on absurd counts
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from panoptic_node.evaluation.evaluator import score_samples
    from panoptic_node.inference.backends import int8_scales_for, make_pipeline
    from panoptic_node.inference.cpu_features import int8_saturates
    from panoptic_node.inference.graph_per_shape import GraphPerShape
    from panoptic_node.inference.openvino_backend import OpenVinoBackend
    from panoptic_node.inference.pipeline import Pipeline
    from panoptic_node.model.config import load_config
    from panoptic_node.training.data import CamVid, find_camvid

    root = find_camvid(args.camvid)
    data = CamVid(root, drives=args.drives.split(",")) if args.drives else CamVid(root, "val")
    samples = data.load_all()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["PANOPTIC_NODE_GRAPH_CACHE"] = cache  # graphs made fresh, as on a new machine
        rows = {}
        runs = [("torch fp32", "torch", "fp32"), ("openvino fp32", "openvino", "fp32"),
                ("openvino int8 (auto)", "auto", "auto")]
        cfg = load_config(args.model)
        default_int8 = int8_scales_for(cfg, args.weights, "openvino", "auto", log=None) or {}
        # the default's graph made another way, each row beside the default in one run: int8 matrix products
        # (the default's on CPUs without VNNI keeps them float), and every part int8 (where the scales keep
        # parts float: what those parts cost in time and win in accuracy)
        variants = {}
        if int8_saturates():
            variants["int8, int8 matmuls"] = {"int8_matmuls": True}
        if default_int8.get("float_nodes"):
            variants["int8, all of it"] = {"float_nodes": []}
        runs += [(name, "openvino", name) for name in variants]
        for name, backend, precision in runs:
            if precision in variants:
                int8 = {**int8_scales_for(cfg, args.weights, "openvino", "int8", log=None), **variants[precision]}
                graphs = GraphPerShape(cfg, args.weights, lambda p: OpenVinoBackend(p, cfg), log=lambda m: None,
                                       int8=int8)
                pipe = Pipeline(cfg, graphs)
            else:
                pipe = make_pipeline(args.model, weights=args.weights, backend=backend, precision=precision,
                                     log=lambda m: None)
            pipe(samples[0].rgb)  # the frame size's graph is made before timing
            ev, times = score_samples(pipe, samples, progress=name)
            rep = ev.report()
            bits = pipe.backend.int8_weight_bits  # 7 on an x86 CPU without VNNI (cpu_features.py)
            rows[name] = (f"{pipe.backend.name} {pipe.backend.precision}" + (f", {bits}-bit" if bits else "")
                          + (", float mm" if bits and precision != "int8, int8 matmuls" and int8_saturates() else "")
                          + (", part float" if bits and {**default_int8, **variants.get(precision, {})}.get(
                              "float_nodes") else ""),
                          100 * rep["pq"]["pq"],
                          100 * rep["pq_things"]["pq"], 100 * rep["miou"], 1000 * statistics.median(times))
    base = rows["torch fp32"][4]
    print(f"{len(samples)} frames ({'drives ' + args.drives if args.drives else 'CamVid val'}), "
          f"weights {args.weights or 'shipped'}, {args.threads} threads")
    print(f"{'run':22} {'ran as':32} {'PQ':>5} {'things':>6} {'mIoU':>5} {'ms/frame':>8} {'vs torch':>8}")
    for name, (ran, pq, things, miou, ms) in rows.items():
        print(f"{name:22} {ran:32} {pq:5.1f} {things:6.1f} {miou:5.1f} {ms:8.1f} {base / ms:7.2f}x")


if __name__ == "__main__":
    main()
