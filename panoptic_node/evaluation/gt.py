"""Ground-truth maps in our panoptic convention (label*1000 + instance, stuff = label, -1 void)."""
import numpy as np

from ..inference.result import LABEL_DIVISOR, VOID_LABEL, VOID_PANOPTIC


def panoptic_from_labels(semantic: np.ndarray, instance: np.ndarray, thing_lut: np.ndarray) -> np.ndarray:
    """Thing pixels carry their instance id; thing pixels without one stay `label` (a crowd region)."""
    sem = semantic.astype(np.int32)
    pan = np.where(thing_lut[semantic] & (instance > 0), sem * LABEL_DIVISOR + instance.astype(np.int32), sem)
    return np.where(semantic == VOID_LABEL, VOID_PANOPTIC, pan).astype(np.int32)
