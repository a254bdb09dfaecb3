"""Load and save weights: official facebookresearch/detr files, Hugging Face DetrForSegmentation
(safetensors or pytorch_model.bin, old and transformers-5 names) and our own checkpoints.

Files are read with torch's weights-only unpickler (argparse.Namespace allowed, since official
training checkpoints pickle their command-line args), so a checkpoint cannot run code.
Every problem is one CheckpointError line naming the file and what was expected.
"""
import argparse
import json
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from ..atomic import atomic_path
from ..errors import first_line
from .hf_names import convert_hf_state_dict, looks_like_hf

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    pass


class MissingWeightsError(CheckpointError, FileNotFoundError):
    pass


def _official_to_ours(key: str) -> str:
    key = key[len("detr."):] if key.startswith("detr.") else key
    if key.startswith("backbone.0.body."):
        return "backbone." + key[len("backbone.0.body."):]
    if key.startswith(("bbox_attention.", "mask_head.")):
        return "masks." + key
    return key


def weights_of(cfg, weights=None) -> str:
    """The weights file a model loads: `weights`, else its config's own."""
    path = weights or cfg.weights
    if not path:
        raise MissingWeightsError(f"model '{cfg.name}' has no default weights; pass --weights FILE (an official "
                                  f"DETR, Hugging Face DetrForSegmentation or panoptic_node checkpoint)")
    return path


def require_weights_file(path) -> Path:
    """`path`, if it is a non-empty file; else the error that names it."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise MissingWeightsError(f"weights file '{path}' {what}; expected a DETR / Hugging Face / "
                                  f"panoptic_node checkpoint (.pth, .bin or .safetensors)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"weights file '{path}' is empty; expected a checkpoint")
    return path


def load_model(cfg, weights=None) -> torch.nn.Module:
    """The model `cfg` describes, with its weights (weights_of) loaded."""
    from .detr import build_model
    model = build_model(cfg)
    load_weights(model, weights_of(cfg, weights))
    return model


def read_state_dict(path) -> Tuple[Dict[str, torch.Tensor], str, dict]:
    """Returns (state dict in our names, detected format, our config dict or {})."""
    path = require_weights_file(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if path.suffix == ".safetensors" or (head[8:9] == b"{" and not head.startswith(b"PK")):
        try:
            from safetensors.torch import load_file
            raw = load_file(str(path))
        except Exception as e:  # safetensors raises its own types for truncation and bad headers
            raise CheckpointError(f"weights file '{path}' is not a readable safetensors file ({e})") from None
    elif not head.startswith((b"PK", b"\x80")):
        # torch.save writes a zip archive (legacy files: a pickle); anything else would only get
        # torch's long weights_only advice as the reason
        raise CheckpointError(f"weights file '{path}' is not a torch checkpoint (neither a zip archive nor a pickle); "
                              f"expected a DETR / Hugging Face / panoptic_node checkpoint (.pth, .bin or .safetensors)")
    else:
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                raw = torch.load(path, map_location="cpu", weights_only=True)
        except (zipfile.BadZipFile, RuntimeError, EOFError, OSError) as e:
            raise CheckpointError(f"weights file '{path}' is truncated or not a torch checkpoint ({first_line(e)})") from None
        except Exception as e:  # the weights-only unpickler refuses anything but tensors and plain data
            raise CheckpointError(f"weights file '{path}' is not a checkpoint torch can read safely ({first_line(e)})") from None
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        meta = raw.get("panoptic_node") or {}
        state = raw["model"]
        if meta:
            return dict(state), "panoptic_node", meta.get("config", {})
        if any(k.startswith("detr.") for k in state):
            return {_official_to_ours(k): v for k, v in state.items()}, "official", {}
        raise CheckpointError(f"weights file '{path}' holds a 'model' dict without DETR keys (e.g. "
                              f"{next(iter(state), 'nothing')!r}); expected keys like 'detr.class_embed.weight'")
    if isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        if looks_like_hf(raw):
            return convert_hf_state_dict(raw), "huggingface", {}
        if any(k.startswith("detr.") for k in raw):
            return {_official_to_ours(k): v for k, v in raw.items()}, "official", {}
    raise CheckpointError(f"weights file '{path}' is not a DETR checkpoint; expected {{'model': state_dict}} "
                          f"(facebookresearch/detr or panoptic_node) or Hugging Face DetrForSegmentation weights")


def check_and_load(model: torch.nn.Module, state: Dict[str, torch.Tensor], path, saved_config=None) -> None:
    """saved_config: the config our checkpoints carry; when the file does not fit, its name says which
    model the file is (e.g. weights of an experiment run given without its --model)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            problems.append(f"{len(keys)} {what} keys ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
    if wrong:
        shown = ", ".join(f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in wrong[:3])
        problems.append(f"{len(wrong)} wrong-shape keys ({shown}{', ...' if len(wrong) > 3 else ''})")
    if problems:
        trained_as = (saved_config or {}).get("name")
        hint = (f"; the file holds a '{trained_as}' model (backbone {saved_config.get('backbone')}): pass "
                f"--model {path} to run it with the config it carries, or the YAML it was trained with"
                if trained_as and trained_as != model.cfg.name else "")
        raise CheckpointError(f"weights file '{path}' does not fit model '{model.cfg.name}': "
                              + "; ".join(problems) + hint)
    # weights that fit in shape still see other input if they learned another normalization: every frame
    # would be scaled as they never saw it, and the maps would be quietly worse
    learned = ((saved_config or {}).get("input") or {}).get("normalization")
    wanted = model.cfg.input.normalization
    if learned and learned != wanted:
        raise CheckpointError(f"weights file '{path}' was trained with input normalization '{learned}' but model "
                              f"'{model.cfg.name}' normalizes frames '{wanted}': pass --model {path} to run it "
                              f"with the config it carries, or the YAML it was trained with")
    # weights stored in half precision (shipped files) are widened to the model's dtype
    state = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)


def refuse_non_finite(state: Dict[str, torch.Tensor], path) -> None:
    for key, value in state.items():  # NaN weights would give empty frames forever, without a word
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"weights file '{path}' holds NaN or infinite values (first in '{key}'); "
                                  f"expected a trained checkpoint (a diverged training run?)")


def load_weights(model: torch.nn.Module, path) -> str:
    """Loads any supported format into `model`; returns the detected format."""
    state, fmt, saved_config = read_state_dict(path)
    refuse_non_finite(state, path)
    check_and_load(model, state, path, saved_config)
    return fmt


# the network a training run may start from; the heads after it may be for another label set
SHARED_NETWORK = ("backbone.", "input_proj.", "transformer.")


def init_from(model: torch.nn.Module, path) -> Tuple[List[str], List[str]]:
    """Start a training run from another checkpoint's weights (e.g. a model trained on Cityscapes):
    every tensor whose name and shape fit is copied, the others (a class head for another label set)
    keep their fresh initialisation. Returns (copied, kept fresh). The backbone, projection and
    transformer must all fit: otherwise the file is another network and one CheckpointError says so."""
    state, _, source_cfg = read_state_dict(path)
    refuse_non_finite(state, path)
    expected = model.state_dict()
    fits = {k for k in expected if k in state and tuple(state[k].shape) == tuple(expected[k].shape)}
    if source_cfg.get("labels", model.cfg.labels) != model.cfg.labels:  # same size, other classes: not a fit
        fits = {k for k in fits if not k.startswith("class_embed.")}
    misfit = sorted(k for k in expected if k.startswith(SHARED_NETWORK) and k not in fits)
    if misfit:
        shown = ", ".join(f"{k} {tuple(state[k].shape) if k in state else 'absent'} != {tuple(expected[k].shape)}"
                          for k in misfit[:2])
        raise CheckpointError(f"--init '{path}' is not the network of model '{model.cfg.name}' ({len(misfit)} of its "
                              f"backbone / transformer tensors do not fit: {shown}); expected weights of the same "
                              f"backbone and transformer, where only the heads may differ")
    model.load_state_dict({**expected, **{k: state[k].to(expected[k].dtype) for k in fits}})
    return sorted(fits), sorted(set(expected) - fits)


def refuse_beyond_half(state: Dict[str, torch.Tensor], path) -> None:
    """float16 holds magnitudes up to 65504: a larger weight (a BatchNorm variance, say) would be stored as
    infinite and the file refused on every load; refused here, before anything is written."""
    limit = torch.finfo(torch.float16).max
    for key, value in state.items():
        largest = value.abs().max().item() if value.is_floating_point() and value.numel() else 0.0
        if largest > limit:
            raise CheckpointError(f"'{path}': tensor '{key}' holds {largest:.4g}, beyond float16's {limit:.0f}; "
                                  f"expected weights float16 can store (keep these in float32)")


def save_checkpoint(model: torch.nn.Module, path, half: bool = False, **extra) -> None:
    """Our format: the official layout ({'model': state_dict}) plus our config, written atomically.

    half stores floating-point tensors as float16 (half the size; shipped weights stay under 25 MB)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if half:
        refuse_beyond_half(state, path)
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {"model": state,
               "panoptic_node": {"version": FORMAT_VERSION, "config": model.cfg.to_dict()}}
    # extras (epoch, val metrics) as plain JSON types, so the weights-only loader accepts the file
    payload.update(json.loads(json.dumps(extra, default=float)))
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def save_official(model: torch.nn.Module, path) -> None:
    """Write the facebookresearch/detr layout (keys under detr., heads at top level)."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("masks."):
            out[k[len("masks."):]] = v
        elif k.startswith("backbone."):
            out["detr.backbone.0.body." + k[len("backbone."):]] = v
        else:
            out["detr." + k] = v
    torch.save({"model": out}, path)
