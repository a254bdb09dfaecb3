"""Per-backend latency and accuracy of the street model on CamVid val, in one run:
torch fp32, then ONNX Runtime and OpenVINO (when installed) on the same fp32 and int8 graphs
(int8: QDQ, calibrated on CamVid *train* frames).

    python bench/bench_backends.py [--frames 101] [--threads 2]

Prints end-to-end ms per frame (preprocess + network + postprocess), the speed-up over torch fp32,
and PQ / mIoU of each backend on the same frames, so the cost of int8 is visible before a car.
"""
import argparse
import importlib.util
import platform
import statistics
import tempfile
import time
from pathlib import Path



def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=101)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="street_lite0")
    parser.add_argument("--camvid")
    args = parser.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from panoptic_node.evaluation.evaluator import Evaluator
    from panoptic_node.evaluation.gt import panoptic_from_labels
    from panoptic_node.export import export_onnx
    from panoptic_node.inference.backend import TorchBackend
    from panoptic_node.inference.onnxruntime_backend import OnnxRuntimeBackend
    from panoptic_node.inference.pipeline import Pipeline
    from panoptic_node.model.checkpoint import load_weights
    from panoptic_node.model.config import load_config
    from panoptic_node.model.detr import build_model
    from panoptic_node.inference.onnxruntime_backend import cpu_flags, int8_kernels_saturate
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
        # 8-bit weights, unless this is an x86 CPU without VNNI, where ONNX Runtime's int8 kernels
        # saturate on them (the backend would warn): then 7-bit ones, as a user there would export
        seven_bit = int8_kernels_saturate(platform.machine(), cpu_flags())
        quantize_int8(d / "fp32.onnx", d / "int8.onnx", cfg, size, calib, frames=32, reduce_range=seven_bit)
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
            pipeline = Pipeline(cfg, be)
            ev = Evaluator(pipeline.taxonomy)
            times = []
            pipeline(samples[0].rgb)  # warm-up
            for s in samples:
                t = time.perf_counter()
                r = pipeline(s.rgb)
                times.append(time.perf_counter() - t)
                ev.add(panoptic_from_labels(s.semantic, s.instance, pipeline.taxonomy.thing_lut), s.semantic,
                       r.panoptic, r.semantic)
            rep = ev.report()
            rows.append((name, precision, 1000 * statistics.median(times), rep["pq"]["pq"], rep["miou"]))
    base = rows[0][2]
    print(f"\n{cfg.name} on {len(samples)} CamVid val frames (480x360), {args.threads} threads, "
          f"int8 with {7 if seven_bit else 8}-bit weights")
    print("| backend | precision | ms / frame (median) | frames/s | vs torch fp32 | PQ | mIoU |")
    print("|---|---|---|---|---|---|---|")
    for name, precision, ms, pq, miou in rows:
        print(f"| {name} | {precision} | {ms:.0f} | {1000 / ms:.1f} | {base / ms:.2f}x | {100 * pq:.1f} | {100 * miou:.1f} |")


if __name__ == "__main__":
    main()
