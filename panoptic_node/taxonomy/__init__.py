"""Class sets (COCO panoptic 133, Cityscapes 19 trainIds, CamVid 11) and mappings between them.

A label is the integer a model predicts and `semantic` images carry; 255 is void everywhere.
"""
from dataclasses import dataclass
from importlib import resources
from typing import Dict, List, Optional, Tuple

import numpy as np

VOID = 255


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    isthing: bool
    color: Tuple[int, int, int]


class Taxonomy:
    def __init__(self, name: str, classes: List[ClassInfo]):
        self.name = name
        self.classes = list(classes)
        self.by_id: Dict[int, ClassInfo] = {c.id: c for c in self.classes}
        self.max_id = max(self.by_id)
        # lookup tables over every uint8 label value (void and unknown labels: black, not a thing)
        self.color_lut = np.zeros((256, 3), np.uint8)
        self.thing_lut = np.zeros(256, bool)
        for c in self.classes:
            self.color_lut[c.id] = c.color
            self.thing_lut[c.id] = c.isthing

    def __len__(self) -> int:
        return len(self.classes)

    def __contains__(self, label: int) -> bool:
        return label in self.by_id

    def name_of(self, label: int) -> str:
        return self.by_id[label].name if label in self.by_id else "void"

    def is_thing(self, label: int) -> bool:
        return bool(self.thing_lut[label])

    @property
    def thing_ids(self) -> List[int]:
        return [c.id for c in self.classes if c.isthing]

    @property
    def stuff_ids(self) -> List[int]:
        return [c.id for c in self.classes if not c.isthing]


def _coco() -> Taxonomy:
    text = resources.files(__package__).joinpath("coco_panoptic.csv").read_text()
    classes = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            cid, thing, name, r, g, b = line.split(",")
            classes.append(ClassInfo(int(cid), name, thing == "1", (int(r), int(g), int(b))))
    return Taxonomy("coco", classes)


_CITYSCAPES = [  # trainId, name, isthing, color
    (0, "road", 0, (128, 64, 128)), (1, "sidewalk", 0, (244, 35, 232)), (2, "building", 0, (70, 70, 70)),
    (3, "wall", 0, (102, 102, 156)), (4, "fence", 0, (190, 153, 153)), (5, "pole", 0, (153, 153, 153)),
    (6, "traffic light", 0, (250, 170, 30)), (7, "traffic sign", 0, (220, 220, 0)),
    (8, "vegetation", 0, (107, 142, 35)), (9, "terrain", 0, (152, 251, 152)), (10, "sky", 0, (70, 130, 180)),
    (11, "person", 1, (220, 20, 60)), (12, "rider", 1, (255, 0, 0)), (13, "car", 1, (0, 0, 142)),
    (14, "truck", 1, (0, 0, 70)), (15, "bus", 1, (0, 60, 100)), (16, "train", 1, (0, 80, 100)),
    (17, "motorcycle", 1, (0, 0, 230)), (18, "bicycle", 1, (119, 11, 32)),
]

# Cityscapes label ids (as in *_gtFine_labelIds.png) -> trainIds; every other id is void
CITYSCAPES_LABELID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                                 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

_CAMVID = [  # the SegNet CamVid labels and colours
    (0, "sky", 0, (128, 128, 128)), (1, "building", 0, (128, 0, 0)), (2, "pole", 0, (192, 192, 128)),
    (3, "road", 0, (128, 64, 128)), (4, "pavement", 0, (60, 40, 222)), (5, "tree", 0, (128, 128, 0)),
    (6, "sign symbol", 0, (192, 128, 128)), (7, "fence", 0, (64, 64, 128)), (8, "car", 1, (64, 0, 128)),
    (9, "pedestrian", 1, (64, 64, 0)), (10, "bicyclist", 1, (0, 128, 192)),
]
CAMVID_VOID = 11  # the value CamVid label PNGs use for unlabelled pixels

# MSeg's COCO panoptic -> Cityscapes mapping (category id -> trainId); the rest is void
COCO_TO_CITYSCAPES = {
    1: 11, 2: 18, 3: 13, 4: 17, 6: 15, 7: 16, 8: 14, 10: 6, 13: 7,
    149: 0, 191: 1, 197: 2, 128: 2, 151: 2, 171: 3, 175: 3, 176: 3, 177: 3, 199: 3, 185: 4,
    184: 8, 119: 8, 193: 9, 154: 9, 194: 9, 187: 10,
}

# Cityscapes trainIds -> CamVid (SegNet's 11 classes), following how SegNet grouped CamVid's own 32
# classes: Building takes walls, SignSymbol takes traffic lights, Car takes trucks, buses and trains,
# Bicyclist takes motorcycles and riders. Terrain has no CamVid class: void. Cityscapes keeps a rider
# and their bicycle as two instances where CamVid's ground truth has one blob: thing PQ across the two
# label sets is approximate.
CITYSCAPES_TO_CAMVID = {0: 3, 1: 4, 2: 1, 3: 1, 4: 7, 5: 2, 6: 6, 7: 6, 8: 5, 10: 0, 11: 9, 12: 10,
                        13: 8, 14: 8, 15: 8, 16: 8, 17: 10, 18: 10}


def _table(name, rows) -> Taxonomy:
    return Taxonomy(name, [ClassInfo(i, n, bool(t), c) for i, n, t, c in rows])


_CACHE: Dict[str, Taxonomy] = {}
_BUILDERS = {"coco": _coco, "cityscapes": lambda: _table("cityscapes", _CITYSCAPES),
             "camvid": lambda: _table("camvid", _CAMVID)}
NAMES = tuple(_BUILDERS)


def get_taxonomy(name: str) -> Taxonomy:
    if name not in _BUILDERS:
        raise ValueError(f"unknown label set '{name}', expected one of {', '.join(NAMES)}")
    if name not in _CACHE:
        _CACHE[name] = _BUILDERS[name]()
    return _CACHE[name]


def taxonomy_of(class_map) -> Optional[Taxonomy]:
    """The known label set whose classes are exactly these (class id, name) pairs, as a LabelInfo
    message's class map lists them, or None."""
    pairs = sorted((int(i), str(n)) for i, n in class_map)
    for name in NAMES:
        if pairs == sorted((c.id, c.name) for c in get_taxonomy(name).classes):
            return get_taxonomy(name)
    return None


class LabelMapping:
    """Maps labels of one taxonomy onto another through a 256-entry lookup table.

    A source thing that becomes target stuff (COCO's traffic light / stop sign -> Cityscapes
    traffic light / sign) loses its instance id: its instances merge into one stuff segment.
    """

    def __init__(self, source: Taxonomy, target: Taxonomy, table: Dict[int, int]):
        self.source, self.target = source, target
        self.lut = np.full(256, VOID, np.uint8)
        for s, t in table.items():
            if s not in source or t not in target:
                raise ValueError(f"mapping {source.name}->{target.name} names unknown class {s}->{t}")
            self.lut[s] = t

    def map_semantic(self, semantic: np.ndarray) -> np.ndarray:
        return self.lut[semantic]

    def map_panoptic(self, panoptic: np.ndarray, label_divisor: int = 1000) -> np.ndarray:
        """A panoptic map in our convention (label*1000 + instance, stuff and crowds = label, -1 void)
        in the target label set: instances stay apart, renumbered within their new class (a truck and
        a car that both become car keep two ids); classes that become stuff lose their instances."""
        shifted = panoptic.astype(np.int64) + 1  # void (-1) -> 0: every value indexes a table
        if shifted.size and (shifted.min() < 0 or shifted.max() > 256 * label_divisor):  # labels are uint8
            raise ValueError(f"panoptic values {int(panoptic.min())}..{int(panoptic.max())} are not in our "
                             f"convention (label*{label_divisor} + instance, -1 void)")
        table = np.full(int(shifted.max(initial=0)) + 1, -1, np.int32)
        used: Dict[int, int] = {}
        for v in (np.flatnonzero(np.bincount(shifted.ravel())) - 1).tolist():
            if v < 0:
                continue
            instance = v % label_divisor if v >= label_divisor else 0
            target = int(self.lut[v // label_divisor if v >= label_divisor else v])
            if target == VOID:
                continue
            if instance and self.target.is_thing(target):
                used[target] = used.get(target, 0) + 1
                table[v + 1] = target * label_divisor + used[target]
            else:
                table[v + 1] = target
        return table[shifted]


_MAPPINGS = {("coco", "cityscapes"): COCO_TO_CITYSCAPES, ("cityscapes", "camvid"): CITYSCAPES_TO_CAMVID}


def find_mapping(source: str, target: str) -> Optional[LabelMapping]:
    """get_mapping, or None when there is none."""
    return get_mapping(source, target) if source == target or (source, target) in _MAPPINGS else None


def get_mapping(source: str, target: str) -> LabelMapping:
    if source == target:
        tax = get_taxonomy(source)
        return LabelMapping(tax, tax, {c.id: c.id for c in tax.classes})
    if (source, target) not in _MAPPINGS:
        raise ValueError(f"no label mapping from '{source}' to '{target}'; available: "
                         + ", ".join(f"{a}->{b}" for a, b in _MAPPINGS) + " or the model's own label set")
    return LabelMapping(get_taxonomy(source), get_taxonomy(target), _MAPPINGS[(source, target)])
