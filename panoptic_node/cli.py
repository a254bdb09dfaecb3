"""The `panoptic-node` command: one entry point, one sub-command per job."""
import argparse
import sys
from pathlib import Path


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .model.config import DEFAULT_MODEL
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name under models/ or a YAML config path "
                   f"(default: {DEFAULT_MODEL})")
    p.add_argument("--weights", help="weights file (default: the model config's own)")
    p.add_argument("--threshold", type=float, help="keep queries above this class probability")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backend", default="torch", help="inference backend (default: torch)")
    p.add_argument("--labels", help="publish labels in this label set (e.g. cityscapes for a COCO model)")


def _pipeline(args):
    from .inference.pipeline import Pipeline
    return Pipeline.from_config(args.model, weights=args.weights, backend=args.backend, device=args.device,
                                threshold=args.threshold, labels=args.labels)


def cmd_infer(args) -> int:
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from .coco_format import CocoPanopticWriter
    from .render import overlay
    from .taxonomy import get_taxonomy

    pipeline = _pipeline(args)
    taxonomy = get_taxonomy(pipeline.labels)
    out = Path(args.out)
    writer = CocoPanopticWriter(out, taxonomy)
    failed = 0
    for path in tqdm([Path(p) for p in args.images], desc="infer", unit="frame"):
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            tqdm.write(f"error: cannot read image '{path}' ({e}); expected a PNG or JPEG file")
            failed += 1
            continue
        result = pipeline(rgb)
        stem = path.stem
        writer.add(stem, path.name, result)
        Image.fromarray(result.semantic).save(out / f"{stem}_semantic.png")
        Image.fromarray(result.instance).save(out / f"{stem}_instances.png")
        Image.fromarray(overlay(rgb, result, taxonomy)).save(out / f"{stem}_overlay.png")
        tqdm.write(f"{path.name}: {len(result.segments)} segments, "
                   + ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in result.timings.items()))
    writer.close()
    print(f"wrote {len(writer.annotations)} frames to {out}" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


def cmd_train(args) -> int:
    import torch

    from .training.train import train
    torch.set_num_threads(args.threads)
    crop = tuple(int(v) for v in args.crop.lower().split("x"))[::-1]  # WxH on the command line
    train(args.config, args.data, args.out, epochs=args.epochs, batch_size=args.batch_size, crop=crop,
          lr=args.lr, lr_backbone=args.lr_backbone, resume=args.resume, val_every=args.val_every)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="panoptic-node", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("infer", help="run the pipeline on image files")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", default="out/infer")
    _add_model_args(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("train", help="train a model on CamVid (or another dataset folder)")
    p.add_argument("--config", default="street_lite0")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"))
    p.add_argument("--out", default="runs/street_lite0")
    p.add_argument("--epochs", type=int, default=36)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop", default="480x352", help="training crop WxH")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--lr-backbone", type=float, default=9e-5)
    p.add_argument("--val-every", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # bad input or configuration: one line that says what was wrong, no traceback
        print(f"panoptic-node {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
