"""COCO panoptic format (what panopticapi's pq_compute reads): a PNG per frame whose colour encodes
the segment id (id = R + 256 G + 256^2 B, 0 = void) and one JSON with `annotations[].segments_info`
and `categories`."""
from pathlib import Path
from typing import Dict, List

import numpy as np

from .atomic import write_json, write_png
from .inference.result import PanopticResult
from .taxonomy import Taxonomy


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    ids = ids.astype(np.uint32)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def annotation(result: PanopticResult, image_id: int, file_name: str) -> Dict:
    return {"image_id": image_id, "file_name": file_name, "segments_info": [
        {"id": s.id, "category_id": s.label, "iscrowd": 0, "area": s.area,
         "bbox": [s.box[0], s.box[1], s.box[2] - s.box[0], s.box[3] - s.box[1]], "score": round(s.score, 4)}
        for s in result.segments]}


def categories(taxonomy: Taxonomy) -> List[Dict]:
    return [{"id": c.id, "name": c.name, "isthing": int(c.isthing), "color": list(c.color), "supercategory": ""}
            for c in taxonomy.classes]


def panoptic_json(annotations: List[Dict], images: List[Dict], taxonomy: Taxonomy) -> Dict:
    return {"images": images, "annotations": annotations, "categories": categories(taxonomy)}


class CocoPanopticWriter:
    """Writes one PNG per frame as it comes and the JSON once at `close()` (atomically), so an
    interrupted run never leaves a panoptic.json that looks complete."""

    def __init__(self, out_dir, taxonomy: Taxonomy):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.taxonomy = taxonomy
        self.annotations: List[Dict] = []
        self.images: List[Dict] = []

    def add(self, stem: str, file_name: str, result: PanopticResult) -> None:
        png = f"{stem}_panoptic.png"
        write_png(id_to_rgb(result.segment_ids), self.out / png)
        image_id = len(self.images) + 1  # integer ids, as COCO tools (hotcoco) require
        self.annotations.append(annotation(result, image_id, png))
        h, w = result.shape
        self.images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})

    def close(self) -> Path:
        path = self.out / "panoptic.json"
        write_json(panoptic_json(self.annotations, self.images, self.taxonomy), path)
        return path
