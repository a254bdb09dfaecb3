"""TensorRT from the PyTorch model itself (torch_tensorrt, dynamo), with no ONNX step.

For a model trained or fine-tuned in PyTorch: `--backend tensorrt` without `--onnx` compiles the same
two parts the ONNX export writes (detect on a static canvas, mask head with a dynamic query dimension
1..num_queries) into TensorRT engines, one pair per padded input size (graph_per_shape.PerShape). FP16 is explicit: every layer in float16 except LayerNorm and
GroupNorm, which compute in float32 (FP16 normalisation loses accuracy in transformers), so the result
does not depend on which torch_tensorrt typing mode is the default. INT8 goes through the QDQ ONNX path.

Compiled modules are cached like ONNX engines (tensorrt_backend.get_engine): the key's source hash is
the weights' sha256 plus the model config and the part, so new weights or a changed config rebuild.
"""
import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .backend import Backend, inference_copy
from .cache_key import model_source_sha256
from .tensorrt_backend import EngineKey, get_engine, require_cuda

PRECISIONS = ("fp32", "fp16")


class Float32LayerNorm(nn.LayerNorm):
    """LayerNorm with float32 parameters and arithmetic inside a float16 network."""

    def forward(self, x):
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class Float32GroupNorm(nn.GroupNorm):
    """GroupNorm with float32 parameters and arithmetic inside a float16 network."""

    def forward(self, x):
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)


def half_with_float32_norms(model: nn.Module) -> nn.Module:
    """A float16 copy of `model` whose LayerNorm / GroupNorm layers stay float32."""
    model = copy.deepcopy(model).half()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm):
                norm = Float32LayerNorm(child.normalized_shape, child.eps, child.elementwise_affine)
            elif isinstance(child, nn.GroupNorm):
                norm = Float32GroupNorm(child.num_groups, child.num_channels, child.eps, child.affine)
            else:
                continue
            norm.load_state_dict({k: v.float() for k, v in child.state_dict().items()})
            setattr(parent, name, norm)
    return model


class TorchTensorRTBackend(Backend):  # pragma: no cover - needs a GPU with torch_tensorrt
    name = "tensorrt"
    max_batch = 1  # compiled for one frame (the detect inputs below)

    def __init__(self, model: nn.Module, cfg, weights, precision: str = "fp16", log=print, canvas=None):
        require_cuda()
        if precision not in PRECISIONS:
            raise ValueError(f"torch_tensorrt precision '{precision}' is not one of {', '.join(PRECISIONS)}; for int8 "
                             f"export a calibrated QDQ graph (`panoptic-node export --precision int8`) and pass --onnx")
        try:
            import tensorrt
            import torch_tensorrt
        except ImportError:
            raise RuntimeError("backend 'tensorrt' without --onnx compiles the PyTorch model with torch_tensorrt, which "
                               "is not installed; install torch-tensorrt or export an ONNX graph and pass --onnx") from None
        from ..export import _Detect, _Masks

        self.precision = precision
        self.size = tuple(canvas or cfg.input.canvas)  # graph_per_shape.PerShape makes one per input size
        self.mask_stride = cfg.output_mask_stride
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        model = inference_copy(model)
        if precision == "fp16":
            model = half_with_float32_norms(model)
        model = model.cuda()

        h, w = self.size
        image = torch.zeros(1, 3, h, w, dtype=self.dtype, device="cuda")
        pad = torch.zeros(1, h, w, dtype=torch.uint8, device="cuda")
        with torch.no_grad():
            det = model.detect(image, pad.bool())
        d, q = det.hs.shape[-1], cfg.num_queries
        detect_inputs = [torch_tensorrt.Input(shape=(1, 3, h, w), dtype=self.dtype),
                         torch_tensorrt.Input(shape=(1, h, w), dtype=torch.uint8)]
        mask_inputs = ([torch_tensorrt.Input(min_shape=(1, 1, d), opt_shape=(1, q, d), max_shape=(1, q, d),
                                             dtype=self.dtype)]
                       + [torch_tensorrt.Input(shape=tuple(f.shape), dtype=self.dtype) for f in det.mask_features])
        props = torch.cuda.get_device_properties(0)
        versions = f"{tensorrt.__version__} torch_tensorrt {torch_tensorrt.__version__}"

        def compiled(part, module, inputs):
            key = EngineKey(model_source_sha256(weights, cfg, part), versions, props.name,
                            f"{props.major}.{props.minor}", precision, tuple(self.size))

            def build(out: Path):
                log(f"torch_tensorrt: compiling the {part} part ({precision}) ...")
                trt_module = torch_tensorrt.compile(module.eval(), ir="dynamo", inputs=inputs, min_block_size=1)
                torch_tensorrt.save(trt_module, str(out), output_format="exported_program", inputs=inputs)
                log(f"torch_tensorrt: {part} compiled")

            return torch_tensorrt.load(str(get_engine(key, build, log))).module()

        self.detect_module = compiled("detect", _Detect(model), detect_inputs)
        self.mask_module = compiled("masks", _Masks(model), mask_inputs)

    @torch.inference_mode()
    def detect(self, images, pad_mask):
        logits, boxes, hs, *feats = self.detect_module(images.to("cuda", self.dtype), pad_mask.to("cuda", torch.uint8))
        return logits.float().cpu(), boxes.float().cpu(), hs, feats

    @torch.inference_mode()
    def masks(self, mask_features, index, hs):
        feats = [f[index:index + 1] for f in mask_features]
        return self.mask_module(hs[None], *feats)[0].float()  # stays on the GPU for postprocess
