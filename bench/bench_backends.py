"""Per-backend latency and accuracy of the street model on CamVid val, in one run:
torch fp32, then ONNX Runtime and OpenVINO (when installed) on the same fp32 and int8 graphs
(int8: QDQ, calibrated on CamVid *train* frames).

    python bench/bench_backends.py [--frames 101] [--threads 2] [--chart backends.png]

Prints end-to-end ms per frame (preprocess + network + postprocess), the speed-up over torch fp32,
and PQ / mIoU of each backend on the same frames, so the cost of int8 is visible before a car. A last
row runs the int8 graph as the node's `inference_workers: 2` does (two pipelines, frames at once): its
ms per frame is wall time over frames, the rate it gives rather than each frame's latency.
"""
import argparse
import importlib.util
import statistics
import tempfile
from pathlib import Path



def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=101)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="street_lite0")
    parser.add_argument("--camvid")
    parser.add_argument("--chart", help="also draw ms per frame and PQ per backend into this PNG")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --chart")
    args = parser.parse_args()
    from panoptic_node.output_safety import check_outputs
    try:
        check_outputs({"--chart": args.chart}, overwrite=args.overwrite)  # before minutes of measuring, not after
    except (ValueError, OSError) as e:
        parser.error(str(e))

    import torch
    from panoptic_node.inference.backends import check_threads
    check_threads(args.threads, "--threads")  # torch's thread pool crashes on absurd counts
    torch.set_num_threads(args.threads)
    from panoptic_node.evaluation.evaluator import score_samples
    from panoptic_node.export import export_onnx
    from panoptic_node.inference.backend import TorchBackend
    from panoptic_node.inference.onnxruntime_backend import OnnxRuntimeBackend
    from panoptic_node.inference.pipeline import Pipeline
    from panoptic_node.model.checkpoint import load_weights
    from panoptic_node.model.config import load_config
    from panoptic_node.model.detr import build_model
    from panoptic_node.inference.cpu_features import int8_saturates
    from panoptic_node.quantize import quantize_int8
    from panoptic_node.training.data import CamVid, find_camvid

    root = find_camvid(args.camvid)
    val = CamVid(root, "val")
    samples = [val[i] for i in range(min(args.frames, len(val)))]
    cfg = load_config(args.model)
    model = build_model(cfg)
    load_weights(model, cfg.weights)
    size = cfg.input.canvas
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        export_onnx(model, size, d / "fp32.onnx")
        calib = d / "calib"
        calib.mkdir()
        train_dir = root / "train"
        for p in sorted(train_dir.glob("*.png"))[::12][:32]:  # calibrate on train frames, never val
            (calib / p.name).symlink_to(p)
        # 8-bit weights, unless this is an x86 CPU without VNNI, where both runtimes' int8 kernels
        # saturate on them (the backends would warn): then 7-bit ones and float matrix products, as the
        # graph cache makes there
        seven_bit = int8_saturates()
        quantize_int8(d / "fp32.onnx", d / "int8.onnx", cfg, size, calib, frames=32, reduce_range=seven_bit,
                      float_matmuls=seven_bit)
        (d / "int8.masks.onnx").symlink_to(d / "fp32.masks.onnx")
        torch_be = TorchBackend(model)
        torch_be.size = size  # the same canvas for every backend
        backends = [("torch", "fp32", torch_be),
                    ("onnxruntime", "fp32", OnnxRuntimeBackend(d / "fp32.onnx", cfg, threads=args.threads)),
                    ("onnxruntime", "int8", OnnxRuntimeBackend(d / "int8.onnx", cfg, threads=args.threads))]
        if importlib.util.find_spec("openvino"):
            from panoptic_node.inference.openvino_backend import OpenVinoBackend
            backends += [("openvino", precision, OpenVinoBackend(d / f"{precision}.onnx", cfg, threads=args.threads))
                         for precision in ("fp32", "int8")]
        else:
            print("openvino is not installed: its rows are left out (pip install openvino)")
        for name, precision, be in backends:
            # as make_pipeline runs them: torch's post-processing on one thread beside another runtime
            torch.set_num_threads(args.threads if name == "torch" else 1)
            pipeline = Pipeline(cfg, be)
            pipeline(samples[0].rgb)  # warm-up
            ev, times = score_samples(pipeline, samples)
            rep = ev.report()
            rows.append((name, precision, 1000 * statistics.median(times), rep["pq"]["pq"], rep["miou"]))
        if importlib.util.find_spec("openvino") and args.threads >= 2:
            rows.append(("openvino", "int8, 2 inference workers", *two_workers(cfg, d / "int8.onnx", samples,
                                                                              args.threads)))
    base = rows[0][2]
    print(f"\n{cfg.name} on {len(samples)} CamVid val frames (480x360), {args.threads} threads, "
          f"int8 with {'7-bit weights, matrix products in float' if seven_bit else '8-bit weights'}")
    print("| backend | precision | ms / frame (median) | frames/s | vs torch fp32 | PQ | mIoU |")
    print("|---|---|---|---|---|---|---|")
    for name, precision, ms, pq, miou in rows:
        print(f"| {name} | {precision} | {ms:.0f} | {1000 / ms:.1f} | {base / ms:.2f}x | {100 * pq:.1f} | {100 * miou:.1f} |")
    if args.chart:
        chart(rows, args.chart, f"{cfg.name}, {len(samples)} CamVid val frames, {args.threads} CPU threads")
        print(f"chart: {args.chart}")


def two_workers(cfg, graph, samples, threads):
    """The node's inference_workers: 2 (and replay --inference-workers 2): two pipelines on the int8 graph,
    each on half the threads, inferring frames at once, results in order. Its ms per frame is the wall time
    over the frames (what the rate gives; each frame itself takes longer), then PQ and mIoU."""
    import time

    import torch
    from panoptic_node.evaluation.evaluator import Evaluator
    from panoptic_node.in_order import PipelinesInOrder
    from panoptic_node.inference.openvino_backend import OpenVinoBackend
    from panoptic_node.inference.pipeline import Pipeline
    torch.set_num_threads(1)
    pipelines = [Pipeline(cfg, OpenVinoBackend(graph, cfg, threads=threads // 2)) for _ in range(2)]
    for pipeline in pipelines:
        pipeline(samples[0].rgb)  # warm-up
    pool, results = PipelinesInOrder(pipelines), []
    t0 = time.perf_counter()
    for s in samples:
        pool.submit(s.rgb, s)
        results += pool.ready()
    results += pool.drain()
    ms = 1000 * (time.perf_counter() - t0) / len(samples)
    pool.close()
    ev = Evaluator(pipelines[0].taxonomy)  # scored after the clock stops, as the other rows are
    for done, result in results:
        ev.add_labelled(done.semantic, done.instance, result)
    rep = ev.report()
    return ms, rep["pq"]["pq"], rep["miou"]


def chart(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from panoptic_node.evaluation.report import save_figure
    labels = [f"{name}\n{precision}" for name, precision, *_ in rows]
    fig, (speed, quality) = plt.subplots(1, 2, figsize=(10, 3.6))
    bars = speed.barh(labels, [ms for *_, ms, _, _ in rows], color="#4c72b0")
    speed.bar_label(bars, [f"{ms:.0f} ms ({rows[0][2] / ms:.2f}x)" for *_, ms, _, _ in rows], padding=3)
    speed.set_xlabel("ms per frame, end to end (lower is better)")
    speed.invert_yaxis()
    speed.set_xlim(0, 1.35 * max(r[2] for r in rows))
    bars = quality.barh(labels, [100 * pq for *_, pq, _ in rows], color="#55a868")
    quality.bar_label(bars, [f"PQ {100 * pq:.1f}" for *_, pq, _ in rows], padding=3)
    quality.set_xlabel("PQ on CamVid val")
    quality.invert_yaxis()
    quality.set_yticklabels([])
    quality.set_xlim(0, 75)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
