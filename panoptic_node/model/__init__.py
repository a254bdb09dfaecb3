from .config import ModelConfig, load_config, DEFAULT_MODEL
from .detr import PanopticDETR, DetectOutput, build_model

__all__ = ["ModelConfig", "load_config", "DEFAULT_MODEL", "PanopticDETR", "DetectOutput", "build_model"]
