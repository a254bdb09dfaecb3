"""Whether this CPU's int8 dot products saturate on full-range 8-bit weights: x86 without VNNI.

There, int8 convolutions and matrix products run on vpmaddubsw (SSE / AVX2 / AVX-512), which adds each
pair of 8-bit products into a 16-bit lane that saturates: 255 x 127 x 2 does not fit, 255 x 63 x 2 does.
ONNX Runtime's CPU kernels and OpenVINO's both use it there (OpenVINO documents it as its "saturation
issue", worst on MobileNet-like networks such as EfficientNet-Lite; measured on an AMD EPYC Zen 2, AVX2:
the street model's int8 graph on OpenVINO fell from PQ 73.7 to 20.9 on CamVid val with 8-bit weights and
scored 72.9 with 7-bit ones). VNNI (vpdpbusd) adds in 32-bit lanes; ARM, GPUs and TensorRT have no such
limit, and there 7-bit weights only cost accuracy."""
import platform
from pathlib import Path
from typing import Optional

VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}
X86 = ("x86_64", "amd64", "i386", "i686")


def cpu_flags() -> set:
    """This CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def int8_saturates(machine: Optional[str] = None, flags: Optional[set] = None) -> bool:
    """Whether 8-bit weights overflow the CPU runtimes' int8 kernels here (default: this machine). An x86
    machine without /proc/cpuinfo (no flags to read) counts as one without VNNI: 7-bit weights cost it a
    few tenths of PQ where 8-bit ones could cost fifty points."""
    machine = platform.machine() if machine is None else machine
    return machine.lower() in X86 and not (cpu_flags() if flags is None else flags) & VNNI_FLAGS


def int8_saturation_warning(meta: dict, runtime: str, machine: Optional[str] = None,
                            flags: Optional[set] = None) -> Optional[str]:
    """A warning when an int8 graph with full 8-bit weights is about to run on `runtime` where its int8
    kernels saturate; None when it is safe."""
    if meta.get("precision") != "int8" or meta.get("int8_weight_bits") != 8 or not int8_saturates(machine, flags):
        return None
    return (f"WARNING: this int8 graph has 8-bit weights and this x86 CPU has no VNNI, where {runtime}'s int8 "
            f"kernels saturate (the street model fell from PQ 73.7 to 20.9); re-export it with "
            f"`panoptic-node export --precision int8 --reduce-range` for this CPU, or leave --onnx out (the "
            f"graph cache makes 7-bit graphs here)")
