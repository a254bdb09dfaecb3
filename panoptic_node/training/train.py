"""`panoptic-node train`: fit a DETR panoptic model on a segmentation dataset (CamVid by default).

Per epoch: shuffled crops through the set losses (last and auxiliary decoder layers), AdamW with a
lower backbone learning rate, cosine decay, gradient clipping; then a checkpoint (resumable), the
val PQ / mIoU through the real Pipeline, `history.json` and a training-curve PNG. `best.pth` keeps
the epoch with the best val PQ (model selection is the only use of val frames).

Validation frames are CamVid's val split by default, or whole drives held out of training
(`train_drives` / `val_drives`): CamVid's val is the drive most training frames come from, so only
a held-out drive says how the model does on streets it never saw.
"""
import dataclasses
import math
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..atomic import atomic_path, write_json
from ..evaluation.evaluator import score_samples
from ..evaluation.report import save_figure
from ..inference.backend import TorchBackend
from ..inference.pipeline import Pipeline
from ..inference.preprocess import normalize
from ..model.checkpoint import init_from, read_state_dict, save_checkpoint
from ..model.config import load_config, network_record
from ..model.detr import build_model
from ..model.losses import MASK_LOSSES, SetCriterion
from ..model.matcher import HungarianMatcher, fixed_stuff_queries
from ..output_safety import OutputLock, refuse_foreign_folder, refuse_inputs, refuse_unwritable
from ..taxonomy import VOID, get_taxonomy
from .augment import PHOTOMETRIC, augment, class_mix, copy_paste
from .class_balance import describe, frame_class_weights
from .compare import Run
from .data import check_dataset_labels, drive_of, every_nth_frame, frames_by_drive, make_dataset
from .drive_balance import balanced_order, drive_shares
from .ema import WeightAverage
from .mixstyle import MixStyle
from .query_groups import QueryGroups
from .semantic_aux import SemanticAux
from .semantic_map import semantic_map_loss
from .targets import build_target

LOSS_STRIDE = 4  # masks are supervised on a stride-4 grid
# settings added after runs were saved, with the value that means "off": such runs resume
ADDED_SETTINGS = {"semantic_aux": 0.0, "copy_paste": 0.0, "init": None, "weight_decay": 1e-4, "mixstyle": 0.0,
                  "freeze_backbone": 0, "class_balance": 0.0, "train_every": 1, "head_first": 0,
                  "drive_balance": 0.0, "class_mix": 0.0, "mask_loss": "focal", "query_groups": 1,
                  "no_object_weight": 0.1, "rotate": 0.0, "stuff_queries": False,
                  "semantic_aux_balance": 0.0, "semantic_map": 0.0, "semantic_map_balance": 0.0}


def run_record(settings: dict, cfg) -> dict:
    """What settings.json keeps of a run: the recipe's options and the network they trained, so that
    compare-runs never takes two runs of one config name but different networks for one recipe."""
    return {**settings, "network": network_record(cfg)}


FREEZE_STRIDES = (0, 4, 8, 16)  # --freeze-backbone: 0 trains it all
MAX_QUERY_GROUPS = 11  # Group DETR's own count; each group costs its queries' decoder, mask and matching work


def freeze_backbone(backbone: torch.nn.Module, stride: int) -> int:
    """Keep the backbone's ImageNet weights up to the end of `stride` (the stem and every block through that
    stride's last one), so the generic low-level features are not fitted to the training drives; returns
    the number of tensors frozen."""
    if not stride:
        return 0
    last = backbone.taps[backbone.strides.index(stride)]
    frozen = list(backbone._conv_stem.parameters()) + list(backbone._bn0.parameters())
    for block in backbone._blocks[:last + 1]:
        frozen += list(block.parameters())
    for p in frozen:
        p.requires_grad_(False)
    return len(frozen)


def freeze_batchnorm(model: torch.nn.Module) -> None:
    """Batches of 4 give poor statistics: keep the ImageNet BatchNorm statistics, train the rest."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def read_training_checkpoint(path) -> dict:
    """A run's checkpoint.pth, read weights-only (a file cannot run code); one ValueError line otherwise."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"'{path}' is not a training checkpoint panoptic_node can read ({type(e).__name__}); "
                         f"expected the checkpoint.pth `panoptic-node train` writes") from None


RUN_FILES = ("checkpoint.pth", "last.pth", "best.pth", "history.json", "settings.json", "training_curve.png")


def config_changes(trained_as: dict, cfg) -> list:
    """Where `cfg` (network and input; not weights or post-processing) differs from the config a run trained
    with, as 'key old -> new': a run names its config, and a YAML edited under the same name (street_lite0's
    input normalization, 2026-12-04) would otherwise be resumed as another network without a word."""
    from ..model.config import network_changes, network_config
    return network_changes(network_config(trained_as), cfg)


def check_run_folder(out: Path, data, resume: bool, overwrite: bool, init=None) -> None:
    """Refuse, in one line, a --out whose files this run would replace without being asked: another
    run's weights are hours of work. --resume continues a run from its checkpoint.pth; --overwrite
    replaces a run; the dataset is never written into."""
    refuse_inputs("--out", out, [data, init])
    refuse_unwritable("--out", out, is_folder=True)
    # a log the user's shell opened in the folder before the run started (nohup ... > out/train.log) is
    # theirs and stays; anything else (a bag, a dataset, their files) would get a run written into it
    refuse_foreign_folder("--out", out, lambda name: name in RUN_FILES or name.endswith(".log") or name == "nohup.out",
                          "a training run")
    present = [name for name in RUN_FILES if (out / name).exists()]
    if not present or overwrite or (resume and (out / "checkpoint.pth").is_file()):
        return
    why = "has no checkpoint.pth to resume from, but holds" if resume else "already holds a training run:"
    raise FileExistsError(f"--out '{out}' {why} {', '.join(present)}; --resume continues a run, --overwrite "
                          f"replaces it, or choose another --out")


def frame_pixels(sample, normalization):
    """The pixels of an augmented crop that come from its frame, for the `frame` normalization's statistics: a
    crop padded past its scaled frame is black and void there (elsewhere, None: every pixel)."""
    return (sample.semantic != VOID) | sample.rgb.any(-1) if normalization in ("frame", "frame_wb") else None


def donors_of_other_drives(samples) -> dict:
    """For each drive, the frames of the other drives (class mix across drives); with one drive, its own frames."""
    by_drive = frames_by_drive(samples)
    return {d: [s for other, frames in by_drive.items() if other != d or len(by_drive) == 1 for s in frames]
            for d in by_drive}


def make_batch(samples, rng, crop, normalization, thing_lut, scale=(0.75, 1.5), colour="basic",
               copy_paste_p=0.0, donors=(), class_mix_p=0.0, mix_donors=None, rotate=0.0):
    """`copy_paste_p` > 0: each frame, with that probability, first gets objects of a random donor frame.
    `class_mix_p` > 0: each frame, with that probability, then gets half the classes of a random frame of another
    drive (`mix_donors`, as donors_of_other_drives gives it).
    `rotate` > 0: each frame is then turned by an angle drawn from [-rotate, rotate] degrees (augment.rotated),
    before the scale, crop, flip and colour changes."""
    if copy_paste_p > 0:  # draws nothing when off, so the other recipes' random streams stay as they were
        samples = [copy_paste(s, donors[int(rng.integers(len(donors)))], rng, thing_lut)
                   if rng.random() < copy_paste_p else s for s in samples]
    if class_mix_p > 0:
        mixed = []
        for s in samples:
            if rng.random() < class_mix_p:
                others = mix_donors[drive_of(s.name)]
                s = class_mix(s, others[int(rng.integers(len(others)))], rng, thing_lut)
            mixed.append(s)
        samples = mixed
    augmented = [augment(s, rng, crop, scale, PHOTOMETRIC[colour], rotate) for s in samples]
    images = torch.stack([torch.from_numpy(normalize(a.rgb, normalization, frame_pixels(a, normalization)))
                          .permute(2, 0, 1) for a in augmented])
    images = images.contiguous(memory_format=torch.channels_last)
    pad = torch.zeros(images.shape[0], images.shape[2], images.shape[3], dtype=torch.bool)
    targets = [build_target(a.semantic, a.instance, thing_lut, LOSS_STRIDE) for a in augmented]
    return images, pad, targets


def loss_layers(model, images, pad, out=None):
    """(logits, boxes, masks flattened on the loss grid) for the last decoder layer, then the others.
    `out`: the model's DetectOutput for these images when the caller already has it."""
    out = out if out is not None else model.detect(images, pad)
    layers = []
    n_layers = out.aux_hs.shape[0]
    grid = (images.shape[-2] // LOSS_STRIDE, images.shape[-1] // LOSS_STRIDE)
    for li in reversed(range(n_layers)):
        masks = model.predict_masks(out.mask_features, out.aux_hs[li])
        if masks.shape[-2:] != grid:
            masks = F.interpolate(masks, size=grid, mode="bilinear", align_corners=False)
        layers.append((out.aux_logits[li], out.aux_boxes[li], masks.flatten(2)))
    return layers


def training_loss(model, criterion, images, pad, targets, semantic_aux=None, semantic_weight=0.0, query_groups=None,
                  semantic_map=0.0, semantic_map_weights=None):
    """The set losses on every decoder layer, plus the weighted semantic auxiliary loss when there is one.
    With query groups, each group's set losses, matched on their own, and their mean (one group's scale).
    `semantic_map` > 0 adds that weight times the cross-entropy of the last layer's queries' semantic map
    (semantic_map.py; the model's own queries), its pixels weighed by `semantic_map_weights` when given."""
    out = model.detect(images, pad, query_groups)
    layers = loss_layers(model, images, pad, out)
    if query_groups is None:
        loss, parts = criterion(layers, targets)
    else:
        each = [criterion(group, targets) for group in query_groups.split(layers)]
        loss = sum(total for total, _ in each) / len(each)
        parts = {k: sum(p[k] for _, p in each) / len(each) for k in each[0][1]}
    if semantic_map:
        logits, _, masks = (query_groups.split(layers)[0] if query_groups is not None else layers)[0]
        on_grid = semantic_map_loss(logits, masks, torch.stack([t["semantic"].flatten() for t in targets]),
                                    semantic_map_weights)
        loss = loss + semantic_map * on_grid
        parts["semantic_map"] = float(on_grid.detach())
    if semantic_aux is not None:
        semantic = semantic_aux(out.mask_features[0], torch.stack([t["semantic"] for t in targets]))
        loss = loss + semantic_weight * semantic
        parts["semantic"] = float(semantic.detach())
    return loss, parts


def evaluate(model, cfg, samples) -> dict:
    model.eval()
    ev, _ = score_samples(Pipeline(cfg, TorchBackend(model)), samples)
    model.train()
    freeze_batchnorm(model)
    rep = ev.report()
    return {"pq": rep["pq"]["pq"], "pq_things": rep["pq_things"]["pq"], "pq_stuff": rep["pq_stuff"]["pq"],
            "miou": rep["miou"], "pixel_accuracy": rep["pixel_accuracy"],
            "iou": {v["name"]: v["iou"] for v in rep["per_class"].values()},
            # what PQ depends on beside the weights: runs scored otherwise are not compared (compare.py)
            "postprocess": dataclasses.asdict(cfg.postprocess)}


def plot_curve(history, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(epochs, [h["loss"] for h in history], color="tab:gray", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss")
    scored = [h for h in history if h.get("val")]
    if scored:  # a release run trains on every frame: no empty validation axis beside its loss
        ax2 = ax1.twinx()
        for key, color in (("miou", "tab:blue"), ("pq", "tab:orange")):
            ax2.plot([h["epoch"] for h in scored], [100 * h["val"][key] for h in scored], color=color,
                     marker=".", label=f"val {key}")
        ax2.set_ylabel("val %")
    fig.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


BACKBONE_STRIDE = 32


def require(ok: bool, option: str, value, expected: str) -> None:
    """One line naming the option, its value and what it expects."""
    if not ok:
        raise ValueError(f"{option} {value}: expected {expected}")


STOP_WHEN = ("under", "unreachable")


def mean_under_bar(history, bar: float, from_epoch: int, still_to_come: int = 0):
    """--stop-below's rule: the mean held-out mIoU (percent) of the evaluations at `from_epoch` or later when it is
    under `bar` (the run stops), else None (it goes on; also with no such evaluation yet, or bar 0). The mean is
    compare-runs' own (compare.Run.late_mean), so a run stops by the number its verdict will be read by.
    `still_to_come` (--stop-when unreachable): the window's evaluations not yet made, each counted at the best
    held-out mIoU the run has had; the run stops only once even they could not lift the mean to the bar (one
    evaluation moves by about a point: a window's first one under the bar alone no longer ends a run)."""
    run = Run("this run", history, evaluations=[h for h in history if "val" in h])
    window = run.window(from_epoch)
    if not bar or not window:
        return None
    mean = run.late_mean("miou", from_epoch)
    best = max(e["val"]["miou"] for e in run.evaluations)
    reachable = (mean * len(window) + best * still_to_come) / (len(window) + still_to_come)
    return 100 * mean if 100 * reachable < bar else None


def evaluates(epoch: int, epochs: int, val_every: int) -> bool:
    """Whether the run evaluates after `epoch` (1-based): every `val_every` epochs and after the last."""
    return bool(val_every) and (epoch % val_every == 0 or epoch == epochs)


def evaluations_to_come(epoch: int, epochs: int, val_every: int, from_epoch: int) -> int:
    """The evaluations after `epoch` that a rule judging from `from_epoch` on will count."""
    return sum(evaluates(e, epochs, val_every) for e in range(max(epoch + 1, from_epoch), epochs + 1))


def check_schedule(epochs, batch_size, crop, lr, lr_backbone, val_every):
    """Refuses a schedule that could not train, before anything is read or written."""
    require(epochs >= 1, "--epochs", epochs, "a whole number of epochs >= 1")
    require(batch_size >= 1, "--batch-size", batch_size, ">= 1 frames per step")
    require(math.isfinite(lr) and lr >= 0, "--lr", lr, "a learning rate >= 0 (e.g. 3e-4)")
    require(math.isfinite(lr_backbone) and lr_backbone >= 0, "--lr-backbone", lr_backbone,
            "a learning rate >= 0 (0 keeps ImageNet's backbone as it is)")
    require(val_every >= 0, "--val-every", val_every, "epochs between evaluations >= 1 (0: no evaluation)")
    h, w = crop
    # a side off the backbone's grid is padded inside the network: crops would teach it borders of padding
    require(min(h, w) >= 2 * BACKBONE_STRIDE and not h % BACKBONE_STRIDE and not w % BACKBONE_STRIDE, "--crop",
            f"{w}x{h}", f"WxH with sides that are multiples of {BACKBONE_STRIDE} (the backbone's stride), at least "
                        f"{2 * BACKBONE_STRIDE} (e.g. 480x352)")


def require_balance_power(power, option: str) -> None:
    """A class-balancing power (class_balance.py's weights): in [0, 1], finite."""
    require(math.isfinite(power) and 0.0 <= power <= 1.0, option, power,
            "a power in [0, 1] on median frequency / a class's frequency (0 = off, 1 = SegNet's weights)")


def check_recipe(colour, scale, ema, copy_paste, weight_decay, semantic_aux, mixstyle, class_balance, class_mix,
                 rotate=0.0):
    """Refuses augmentation and regularisation settings outside their range, each by its option."""
    require(colour in PHOTOMETRIC, "--photometric", colour, f"one of {', '.join(PHOTOMETRIC)}")
    require(0 < scale[0] <= scale[1] and math.isfinite(scale[1]), "--scale", f"{scale[0]},{scale[1]}",
            "LOW,HIGH positive factors with LOW <= HIGH")
    require(0.0 <= ema < 1.0, "--ema", ema, "a decay in [0, 1) (0 = off, 0.998 averages ~500 steps)")
    require(0.0 <= copy_paste <= 1.0, "--copy-paste", copy_paste, "a probability in [0, 1] (0 = off)")
    require(0.0 <= class_mix <= 1.0, "--class-mix", class_mix, "a probability in [0, 1] (0 = off)")
    require(math.isfinite(rotate) and 0.0 <= rotate <= 45.0, "--rotate", rotate,
            "the largest turn of a frame in degrees, in [0, 45] (0 = off)")
    require(math.isfinite(weight_decay) and weight_decay >= 0, "--weight-decay", weight_decay,
            ">= 0 (AdamW's decoupled decay; 1e-4 is DETR's)")
    require(math.isfinite(semantic_aux) and semantic_aux >= 0, "--semantic-aux", semantic_aux,
            "a weight >= 0 (0 = off, 1 weighs it like one class loss)")
    require(0.0 <= mixstyle <= 1.0, "--mixstyle", mixstyle, "a probability per batch in [0, 1] (0 = off, 0.5 is the "
                                                            "paper's)")
    require_balance_power(class_balance, "--class-balance")


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """The learning-rate factor at `step` of `total`: a linear warm-up over `warmup` steps, then cosine decay to 5 %."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def after_head_first(schedule, head_steps: int, warmup: int):
    """The backbone's learning-rate factor with --head-first: 0 for the head's steps alone, then warmed up from 0
    over `warmup` steps into `schedule`, as at the start of a run."""
    return lambda step: 0.0 if step < head_steps else schedule(step) * min(1.0, (step - head_steps + 1) / max(1, warmup))


def split_drives(train_drives, val_drives):
    """Checks a leave-one-drive-out split: no drive on both sides. None = CamVid's own split;
    an empty `val_drives` = no validation (a release trained on every labelled frame)."""
    if train_drives is None and val_drives is None:
        return None, None
    if not train_drives:
        raise ValueError("--val-drives needs --train-drives: name the drives that train "
                         "(CamVid: 0001TP, 0006R0, 0016E5)")
    both = sorted(set(train_drives) & set(val_drives or ()))
    if both:
        raise ValueError(f"drive {', '.join(both)} is in both --train-drives and --val-drives; a held-out "
                         f"drive must not train")
    return list(train_drives), list(val_drives or ())


def train(config: str, data: str, out: str, epochs: int = 36, batch_size: int = 4, crop=(352, 480),
          lr: float = 3e-4, lr_backbone: float = 9e-5, weight_decay: float = 1e-4, clip: float = 0.1,
          resume: bool = False, seed: int = 0, val_every: int = 3, dataset: str = "camvid",
          max_train_frames: int = 0, stop_after_epoch: int = 0, train_drives=None, val_drives=None,
          scale=(0.75, 1.5), colour: str = "basic", ema: float = 0.0, semantic_aux: float = 0.0,
          copy_paste: float = 0.0, init=None, mixstyle: float = 0.0, freeze_backbone_to: int = 0,
          class_balance: float = 0.0, train_every: int = 1, head_first: int = 0, drive_balance: float = 0.0,
          class_mix: float = 0.0, mask_loss: str = "focal", query_groups: int = 1, no_object_weight: float = 0.1,
          stop_below: float = 0.0, stop_from: int = 1, stop_when: str = "under", rotate: float = 0.0,
          stuff_queries: bool = False,
          semantic_aux_balance: float = 0.0, semantic_map: float = 0.0, semantic_map_balance: float = 0.0,
          overwrite: bool = False, log=print) -> dict:
    """stop_after_epoch ends this run early (the schedule still spans `epochs`); --resume continues.
    `ema` > 0 evaluates and saves an exponential moving average of the weights with that decay.
    `semantic_aux` > 0 adds a per-pixel class loss on the pixel embeddings with that weight.
    `semantic_aux_balance` > 0 weighs that loss's pixels by (median / their class's pixel frequency) ** the power,
    leaving the set losses as they are (`class_balance` weighs those).
    `semantic_map` > 0 adds a per-pixel class loss on the queries' own semantic map (semantic_map.py) with that
    weight; `semantic_map_balance` > 0 weighs its pixels as `semantic_aux_balance` does the auxiliary loss's.
    `copy_paste` > 0 pastes another training frame's objects into a frame with that probability.
    `rotate` > 0 turns each training frame by an angle drawn from [-rotate, rotate] degrees (a camera's roll).
    `mixstyle` > 0 mixes the frames' feature statistics in the backbone with that probability per batch.
    `init`: weights to start from (checkpoint.init_from) instead of ImageNet's backbone and fresh heads.
    `freeze_backbone_to` (4, 8 or 16) keeps the backbone's ImageNet weights up to that stride.
    `class_balance` > 0 weighs each class's losses by (median / its pixel frequency) ** class_balance.
    `train_every` > 1 trains on every n-th frame of each training drive only (what more frames are worth).
    `head_first` > 0 keeps the backbone at its starting weights for that many epochs while the head learns on its
    features, then trains it too (LP-FT: a random head's first gradients distort pretrained features least so).
    `drive_balance` > 0 draws each epoch's frames with the drives' shares moved toward equal ones (drive_balance.py).
    `class_mix` > 0 pastes half the classes of another drive's frame into a frame with that probability.
    `mask_loss`: "focal" (DETR's, weight 20) or "bce" (Mask2Former's, weight 5) beside the dice loss.
    `query_groups` > 1 trains that many groups of queries, each matched on its own (Group DETR; query_groups.py):
    the saved model keeps only its own.
    `no_object_weight`: the class loss's weight of "no object" for the queries matched to nothing (DETR's eos_coef,
    0.1); lower lets the queries claim more, small segments among them.
    `stuff_queries`: each stuff class's segment is always matched to a query of its own (the first queries, one a
    class) and the things to the others, instead of every pair by cost (matcher.fixed_stuff_queries).
    `stop_below` > 0 (held-out mIoU in percent) ends the run after an evaluation at epoch `stop_from` or later once the
    mean mIoU of those evaluations is under it: evaluations still to come, each at stop_below, could then not lift
    the mean to it (the early stop the experiment records' rules call for, applied as each evaluation lands);
    `stop_when` "unreachable" waits until the evaluations still to come, each at the run's best so far, could not."""
    check_schedule(epochs, batch_size, crop, lr, lr_backbone, val_every)
    check_recipe(colour, scale, ema, copy_paste, weight_decay, semantic_aux, mixstyle, class_balance, class_mix,
                 rotate)
    # numpy's generator refuses a negative seed with a line that names no option
    require(0 <= seed < 2 ** 32, "--seed", seed, "a whole number in [0, 2**32) (another seed of one recipe shows "
                                                 "its noise)")
    require(mask_loss in MASK_LOSSES, "--mask-loss", mask_loss, f"one of {', '.join(MASK_LOSSES)}")
    require(math.isfinite(no_object_weight) and 0.0 < no_object_weight <= 1.0, "--no-object-weight",
            no_object_weight, "a weight in (0, 1] (DETR's 0.1; a labelled class weighs 1)")
    require(isinstance(query_groups, int) and 1 <= query_groups <= MAX_QUERY_GROUPS, "--query-groups", query_groups,
            f"a whole number from 1 (the model's own queries alone) to {MAX_QUERY_GROUPS}")
    require(math.isfinite(stop_below) and 0.0 <= stop_below <= 100.0, "--stop-below", stop_below,
            "a held-out mIoU in percent, 0-100 (0: never stop early)")
    require(isinstance(stop_from, int) and stop_from >= 1, "--stop-from", stop_from, "an epoch >= 1")
    require(stop_when in STOP_WHEN, "--stop-when", stop_when, f"one of {', '.join(STOP_WHEN)}")
    require(isinstance(stop_after_epoch, int) and 0 <= stop_after_epoch <= epochs, "--stop-after", stop_after_epoch,
            f"an epoch of the schedule, 1 to --epochs {epochs} (0: run to its end)")
    require(not stop_below or val_every, "--stop-below", stop_below,
            "a run that evaluates (--val-every >= 1): it judges the held-out evaluations")
    require(train_every >= 1, "--train-every", train_every,
            "a whole number >= 1 (1 trains on every frame, 2 on every second frame of each drive)")
    require(0.0 <= drive_balance <= 1.0, "--drive-balance", drive_balance,
            "a power in [0, 1] (0 draws frames uniformly, 1 gives every training drive the same share)")
    require_balance_power(semantic_aux_balance, "--semantic-aux-balance")
    require(not semantic_aux_balance or semantic_aux, "--semantic-aux-balance", semantic_aux_balance,
            "a run with the semantic auxiliary loss it weighs (--semantic-aux > 0)")
    require(math.isfinite(semantic_map) and semantic_map >= 0, "--semantic-map", semantic_map,
            "a weight >= 0 (0 = off, 1 weighs it like one class loss)")
    require_balance_power(semantic_map_balance, "--semantic-map-balance")
    require(not semantic_map_balance or semantic_map, "--semantic-map-balance", semantic_map_balance,
            "a run with the semantic map loss it weighs (--semantic-map > 0)")
    require(0 <= head_first < epochs, "--head-first", head_first,
            f"a whole number of epochs in [0, {epochs}) (0 trains the backbone from the start)")
    train_drives, val_drives = split_drives(train_drives, val_drives)
    require(not stop_below or val_drives != [], "--stop-below", stop_below,
            "a run with drives held out to evaluate (--val-drives none has none)")
    cfg = load_config(config)
    if mixstyle and not cfg.backbone.startswith("efficientnet_lite"):
        raise ValueError(f"--mixstyle is built for the EfficientNet-Lite backbones; {cfg.name} has {cfg.backbone}")
    require(freeze_backbone_to in FREEZE_STRIDES, "--freeze-backbone", freeze_backbone_to,
            f"a stride, one of {', '.join(map(str, FREEZE_STRIDES))} (0 trains the whole backbone)")
    if freeze_backbone_to and not cfg.backbone.startswith("efficientnet_lite"):
        raise ValueError(f"--freeze-backbone is built for the EfficientNet-Lite backbones; {cfg.name} has "
                         f"{cfg.backbone}")
    if query_groups > 1 and cfg.decoder != "detr":
        raise ValueError(f"--query-groups is built for DETR's decoder; {cfg.name} has decoder {cfg.decoder}")
    if query_groups > 1 and cfg.decoder_layer != "detr":  # the extra groups have positions, no learned features
        raise ValueError(f"--query-groups is built for DETR's decoder layers; {cfg.name} has decoder_layer "
                         f"{cfg.decoder_layer}")
    if semantic_aux and cfg.mask_head != "dot_product":
        raise ValueError(f"--semantic-aux needs the dot_product mask head's pixel embeddings; "
                         f"{cfg.name} has mask_head {cfg.mask_head}")
    check_dataset_labels(dataset, cfg.labels)
    stuff_query = None  # the matcher's fixed query per stuff class, made and checked before anything is written
    if stuff_queries:
        stuff = int((~get_taxonomy(cfg.labels).thing_lut[:cfg.num_classes]).sum())
        require(cfg.num_queries > stuff, "--stuff-queries with", f"{cfg.name}'s {cfg.num_queries} queries",
                f"a model with more queries than its {stuff} stuff classes (one each, the rest for the things)")
        stuff_query = fixed_stuff_queries(get_taxonomy(cfg.labels).thing_lut, cfg.num_classes, cfg.num_queries)
    for option, value in (("--train-every", train_every > 1), ("--drive-balance", drive_balance),
                          ("--class-mix", class_mix)):
        if value and dataset != "camvid":
            raise ValueError(f"{option} needs CamVid, whose file names carry the drive; '{dataset}' frames do not")
    out = Path(out)
    # what a resumed run must share with the run it continues
    settings = {"config": cfg.name, "epochs": epochs, "batch_size": batch_size, "crop": list(crop), "lr": lr,
                "lr_backbone": lr_backbone, "seed": seed, "dataset": dataset, "train_drives": train_drives,
                "val_drives": val_drives, "scale": list(scale), "colour": colour, "ema": ema,
                "max_train_frames": max_train_frames, "semantic_aux": semantic_aux,
                "copy_paste": copy_paste, "init": str(Path(init).resolve()) if init else None,
                "weight_decay": weight_decay, "mixstyle": mixstyle, "freeze_backbone": freeze_backbone_to,
                "class_balance": class_balance, "train_every": train_every, "head_first": head_first,
                "drive_balance": drive_balance, "class_mix": class_mix, "mask_loss": mask_loss,
                "query_groups": query_groups, "no_object_weight": no_object_weight, "rotate": rotate,
                "stuff_queries": bool(stuff_queries), "semantic_aux_balance": semantic_aux_balance,
                "semantic_map": semantic_map, "semantic_map_balance": semantic_map_balance}
    check_run_folder(out, data, resume, overwrite, init)  # before anything is written
    with OutputLock(out):  # one trainer per run folder
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        random.seed(seed)

        # the network first: a wrong --init is refused before thousands of frames are listed and checked
        model = build_model(cfg, pretrained_backbone=True)
        if mixstyle:  # on the stride-4 and stride-8 features, where a frame's style lives (hooks, not weights)
            MixStyle(mixstyle).attach(model.backbone, model.backbone.taps[:2])
        ckpt_path = out / "checkpoint.pth"
        resuming = resume and ckpt_path.is_file()
        if init and not resuming:  # e.g. a model trained on a larger dataset
            copied, fresh = init_from(model, init)
            log(f"initialised {len(copied)} tensors from {init}; fresh: {', '.join(fresh) or 'none'}")

        if train_drives is None:
            train_set = make_dataset(dataset, data, "train", labels=cfg.labels)
            # --val-every 0 never evaluates: a folder without a val split (a pre-training set) trains too
            val_set = make_dataset(dataset, data, "val", labels=cfg.labels) if val_every else None
        else:
            train_set = make_dataset(dataset, data, "train", drives=train_drives, labels=cfg.labels)
            val_set = make_dataset(dataset, data, "val", drives=val_drives, labels=cfg.labels) if val_drives else None
        log(f"loading {len(train_set)} train and {len(val_set) if val_set else 0} val frames from {data}"
            + (f" (train drives {', '.join(train_drives)}; val drives {', '.join(val_drives) or 'none'})"
               if train_drives else ""))
        if train_set.taxonomy != cfg.labels:  # e.g. Cityscapes' 19 classes for the CamVid street model
            log(f"{dataset} labels ({train_set.taxonomy} classes) mapped to {cfg.name}'s {cfg.labels} classes")
        for frames in (train_set, val_set):  # a damaged file found now, not when a batch needs it hours in
            if frames is not None:
                frames.check_files()
        train_samples = train_set.load_all()
        if max_train_frames:
            train_samples = train_samples[:max_train_frames]
        if train_every > 1:
            train_samples = every_nth_frame(train_samples, train_every)
            log(f"training on one frame in {train_every} of each drive: {len(train_samples)} frames")
        if drive_balance:  # CamVid only, its frames decoded already (a lazy Cityscapes list would decode them all)
            frame_drives = [drive_of(s.name) for s in train_samples]
            shares = drive_shares(Counter(frame_drives), drive_balance)
            log("drives' shares of each epoch: "
                + ", ".join(f"{d} {100 * x:.0f} %" for d, x in sorted(shares.items())))
        mix_donors = donors_of_other_drives(train_samples) if class_mix else None
        if mix_donors and len(mix_donors) == 1:
            log("--class-mix: one training drive, so its frames mix with each other")
        val_samples = val_set.load_all() if val_set else []
        if val_drives:  # the split's promise, checked on the frames themselves
            assert not {drive_of(s.name) for s in train_samples} & set(val_drives)
        thing_lut = get_taxonomy(cfg.labels).thing_lut

        # channels-last makes the depthwise convolutions ~1.5x faster on CPU (measured here)
        model = model.to(memory_format=torch.channels_last)
        model.train()
        freeze_batchnorm(model)
        frozen = freeze_backbone(model.backbone, freeze_backbone_to)
        if frozen:
            log(f"backbone up to stride {freeze_backbone_to} kept at its ImageNet weights ({frozen} tensors)")
        backbone_params = [p for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad]
        head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]

        def class_weights_of(power, what):
            """Median frequency balancing from the training frames as loaded, before augmentation (None: off)."""
            if not power:
                return None
            weights = frame_class_weights(train_samples, cfg.num_classes, power)
            log(f"{what}: {describe(weights, get_taxonomy(cfg.labels).name_of)}")
            return weights

        aux = None
        if semantic_aux:
            aux = SemanticAux(cfg.mask_dim, cfg.num_classes,
                              class_weights_of(semantic_aux_balance, "semantic auxiliary loss's class weights"))
        if aux is not None:  # trained with the head, kept out of the saved model
            head_params += list(aux.parameters())
        groups = QueryGroups(query_groups, cfg.num_queries, cfg.hidden_dim) if query_groups > 1 else None
        if groups is not None:  # likewise
            head_params += list(groups.parameters())
        optimizer = torch.optim.AdamW([{"params": head_params, "lr": lr}, {"params": backbone_params, "lr": lr_backbone}],
                                      weight_decay=weight_decay)
        iters_per_epoch = max(1, len(train_samples) // batch_size)
        total = epochs * iters_per_epoch
        warmup = min(200, total // 10)

        def lr_factor(step):
            return warmup_cosine(step, warmup, total)

        # with head_first 0 both groups follow one schedule, exactly as before the option existed
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, [lr_factor, after_head_first(lr_factor, head_first * iters_per_epoch, warmup)] if head_first
            else lr_factor)
        class_weights = class_weights_of(class_balance, "class weights")
        semantic_map_weights = class_weights_of(semantic_map_balance, "semantic map loss's class weights")
        criterion = SetCriterion(cfg.num_classes, eos_coef=no_object_weight, class_weights=class_weights,
                                 mask_loss=mask_loss, matcher=HungarianMatcher(stuff_query=stuff_query))
        average = WeightAverage(model, ema) if ema else None
        # the weights evaluated and saved: the average when there is one
        shown = build_model(cfg, pretrained_backbone=False).to(memory_format=torch.channels_last) if average else model
        if overwrite and not resuming:  # asked to replace the run there, now that this one has its data and
            for name in RUN_FILES:     # weights and is about to write: none of the old run's files may stay
                (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        history, start_epoch, best_pq = [], 0, -1.0
        if resuming:
            state = read_training_checkpoint(ckpt_path)
            before = state.get("settings")
            if before is not None:  # runs from before a setting existed trained without it
                before = {**ADDED_SETTINGS, **before}
            if before is not None and before != settings:
                changed = ", ".join(f"{k} {before.get(k)} -> {settings[k]}" for k in settings if before.get(k) != settings[k])
                raise ValueError(f"--resume with other settings than {ckpt_path} was trained with ({changed}); "
                                 f"resume with the same ones or train into another --out")
            # checkpoints keep the config since 2026-12-04; a run from before has it in its last.pth
            trained_as = state.get("model_config")
            if trained_as is None and (out / "last.pth").is_file():
                trained_as = read_state_dict(out / "last.pth")[2]
            changed = config_changes(trained_as, cfg) if trained_as else []
            if changed:
                raise ValueError(f"--resume with model config '{cfg.name}' changed since {ckpt_path} was trained "
                                 f"({', '.join(changed)}); resume with the config it trained with or train into "
                                 f"another --out")
            model.load_state_dict(state["model"])
            if aux is not None:
                aux.load_state_dict(state["semantic_aux"])
            if groups is not None:
                groups.load_state_dict(state["query_groups"])
            if average:
                average.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_epoch, history, best_pq = state["epoch"], state["history"], state["best_pq"]
            rng.bit_generator.state = state["numpy_rng"]
            torch.set_rng_state(state["torch_rng"])
            log(f"resumed from {ckpt_path} at epoch {start_epoch}")
        elif resume:
            log(f"no checkpoint at {ckpt_path}: starting from scratch")

        for epoch in range(start_epoch, epochs):
            t0 = time.time()
            if head_first:  # no gradients while the backbone waits: those epochs are cheaper, and AdamW skips it
                for p in backbone_params:
                    p.requires_grad_(epoch >= head_first)
            order = (balanced_order(frame_drives, drive_balance, rng) if drive_balance
                     else rng.permutation(len(train_samples)))
            running = []
            bar = tqdm(range(iters_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", leave=False)
            for it in bar:
                idx = order[it * batch_size:(it + 1) * batch_size]
                images, pad, targets = make_batch([train_samples[i] for i in idx], rng, crop, cfg.input.normalization,
                                                  thing_lut, scale, colour, copy_paste, train_samples, class_mix,
                                                  mix_donors, rotate)
                loss, parts = training_loss(model, criterion, images, pad, targets, aux, semantic_aux, groups,
                                            semantic_map, semantic_map_weights)
                if not torch.isfinite(loss):  # stop before the step: the weights and checkpoints stay finite
                    raise RuntimeError(
                        f"training diverged: the loss is {float(loss.detach())} at epoch {epoch + 1}, step {it + 1} "
                        f"(lr {lr}, backbone {lr_backbone}); "
                        + (f"{ckpt_path} holds the last finished epoch. " if ckpt_path.is_file() else "")
                        + "Expected a finite loss: train again into another --out with a lower --lr / --lr-backbone")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
                scheduler.step()
                if average:
                    average.update(model)
                running.append(float(loss.detach()))
                bar.set_postfix(loss=f"{np.mean(running[-20:]):.3f}")
            entry = {"epoch": epoch + 1, "loss": float(np.mean(running)), "train_seconds": time.time() - t0,
                     "lr": scheduler.get_last_lr()[0]}
            if average:
                average.averaged_copy_into(shown)
            if val_samples and evaluates(epoch + 1, epochs, val_every):
                entry["val"] = evaluate(shown, cfg, val_samples)
                if entry["val"]["pq"] > best_pq:
                    best_pq = entry["val"]["pq"]
                    save_checkpoint(shown, out / "best.pth", epoch=epoch + 1, val=entry["val"])
            history.append(entry)
            paused = stop_after_epoch and epoch + 1 >= stop_after_epoch  # to be resumed: no rule judges it now
            to_come = evaluations_to_come(epoch + 1, epochs, val_every, stop_from) if stop_when == "unreachable" else 0
            judged = (mean_under_bar(history, stop_below, stop_from, to_come) if "val" in entry and not paused
                      else None)
            if judged is not None:  # kept in the history, so that compare-runs can say why the run ended early
                entry["stopped"] = {"stop_below": stop_below, "stop_from": stop_from, "mean_miou": round(judged, 4),
                                    **({"when": stop_when} if stop_when != "under" else {})}
            save_checkpoint(shown, out / "last.pth", epoch=epoch + 1)
            with atomic_path(ckpt_path) as tmp:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history,
                            "best_pq": best_pq, "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                            "settings": settings, "model_config": cfg.to_dict(),
                            **({"ema": average.state_dict()} if average else {}),
                            **({"semantic_aux": aux.state_dict()} if aux is not None else {}),
                            **({"query_groups": groups.state_dict()} if groups is not None else {})},
                           tmp)
            write_json(history, out / "history.json", indent=1)  # through a .partial name, as every output
            # the recipe beside the history: the two small files are all `compare-runs` needs of a run once
            # its checkpoints (hundreds of MB) are gone, e.g. kept in models/experiments/runs/
            write_json(run_record(settings, cfg), out / "settings.json", indent=1)
            plot_curve(history, out / "training_curve.png")
            val = entry.get("val")
            log(f"epoch {epoch + 1}: loss {entry['loss']:.3f} ({entry['train_seconds']:.0f} s)"
                + (f", val PQ {100 * val['pq']:.1f} mIoU {100 * val['miou']:.1f}" if val else ""))
            if paused:
                break
            if judged is not None:
                later = (f"the {to_come} still to come, each at the run's best so far, could not lift it there"
                         if stop_when == "unreachable" else f"later ones at {stop_below} each could not lift it there")
                log(f"stopped by --stop-below {stop_below}: the mean held-out mIoU of the evaluations from epoch "
                    f"{stop_from} is {judged:.2f}, under {stop_below} ({later}); {ckpt_path} holds epoch {epoch + 1}")
                break
        return {"history": history, "best_pq": best_pq}
