"""Dataset folders (and camera clips) -> rosbag2 with camera and ground-truth topics, the input `replay`
validates on.

Topics: /camera/image_raw (rgb8), /camera/camera_info, and where labels exist
/ground_truth/panoptic (32SC1, label*1000 + instance, stuff = label, -1 void),
/ground_truth/semantic (mono8, 255 void) and /ground_truth/label_info (vision_msgs/LabelInfo,
once, latched: which label set the ground truth is in, so that replay never scores a model against
labels it does not publish). Stamps increase monotonically.
"""
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np
from tqdm import tqdm

from ..errors import first_line
from ..images import read_labels, read_rgb
from ..evaluation.gt import panoptic_from_labels
from ..messages import image_fields, label_info
from ..taxonomy import CITYSCAPES_LABELID_TO_TRAINID, VOID, get_taxonomy
from ..topic_qos import LABEL_INFO
from ..training.data import CamVid
from .writer import BagWriter, camera_info_msg, header, image_msg, label_info_msg

CAMERA_FRAME = "camera"
GT_PANOPTIC = "/ground_truth/panoptic"
GT_SEMANTIC = "/ground_truth/semantic"
GT_LABEL_INFO = "/ground_truth/label_info"
EPOCH_NS = 1_600_000_000 * 1_000_000_000  # stamps start here so they look like real clock times


@dataclass
class DatasetFrame:
    stamp_ns: int
    rgb: np.ndarray
    semantic: Optional[np.ndarray] = None   # H x W uint8, 255 void
    panoptic: Optional[np.ndarray] = None   # H x W int32
    k: Optional[List[float]] = None         # camera matrix (3x3 row-major) when known
    p: Optional[List[float]] = None


def write_bag(frames: Iterator[DatasetFrame], out, storage: str = "mcap", overwrite: bool = False,
              total: Optional[int] = None, labels: Optional[str] = None, inputs=()) -> int:
    """Writes the frames; `labels` names the label set of their ground truth (taxonomy name);
    `inputs`: what the frames are read from, which the output may never be or hold."""
    n = 0
    last = -1
    label_info_written = False
    # the first frame before the bag opens: a source that is missing or empty is refused with nothing written
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{', '.join(map(str, inputs)) or 'the source'} holds no frames; expected a dataset folder "
                         f"with images")
    with BagWriter(out, storage, overwrite, inputs=inputs) as w:
        for f in tqdm(itertools.chain([first], frames), total=total, desc=f"convert -> {Path(out).name}",
                      unit="frame"):
            if f.stamp_ns <= last:
                raise ValueError(f"stamps must increase: {f.stamp_ns} after {last}")
            last = f.stamp_ns
            hdr = header(f.stamp_ns, CAMERA_FRAME)
            h, w_ = f.rgb.shape[:2]
            # the calibration first: a replay passes the newest one on with each frame's maps, the first included
            w.write("/camera/camera_info", camera_info_msg(hdr, w_, h, f.k, f.p), f.stamp_ns)
            w.write("/camera/image_raw", image_msg(hdr, image_fields(f.rgb, "rgb8")), f.stamp_ns)
            if (f.panoptic is not None or f.semantic is not None) and labels and not label_info_written:
                w.write(GT_LABEL_INFO, label_info_msg(hdr, label_info(get_taxonomy(labels)), 0.0), f.stamp_ns,
                        LABEL_INFO)
                label_info_written = True
            if f.panoptic is not None:
                w.write(GT_PANOPTIC, image_msg(hdr, image_fields(f.panoptic, "32SC1")), f.stamp_ns)
            if f.semantic is not None:
                w.write(GT_SEMANTIC, image_msg(hdr, image_fields(f.semantic, "mono8")), f.stamp_ns)
            n += 1
    return n


def _sequence_stamps(keys, hz: float):
    """(sequence, frame number) pairs in order -> monotonic stamps: frame / hz within a sequence,
    each sequence starting one second after the previous one ended."""
    stamps, offset, prev_seq, first, last = [], EPOCH_NS, None, 0, EPOCH_NS
    for seq, frame in keys:
        if seq != prev_seq:
            offset = (last + 1_000_000_000) if prev_seq is not None else EPOCH_NS
            first, prev_seq = frame, seq
        t = offset + int(round((frame - first) * 1e9 / hz))
        stamps.append(t)
        last = t
    return stamps


def camvid_frames(root, split: str, max_frames: Optional[int] = None) -> Iterator[DatasetFrame]:
    ds = CamVid(root, split)
    pairs = sorted(range(len(ds)), key=lambda i: ds.pairs[i][0].name)
    if max_frames:
        pairs = pairs[:max_frames]
    keys = []
    for i in pairs:
        m = re.match(r"(.+)_(\d+)$", ds.pairs[i][0].stem)
        keys.append((m.group(1), int(m.group(2))) if m else ("seq", i * 30))
    thing_lut = get_taxonomy("camvid").thing_lut
    for i, stamp in zip(pairs, _sequence_stamps(keys, 30.0)):
        s = ds[i]
        yield DatasetFrame(stamp, s.rgb, s.semantic, panoptic_from_labels(s.semantic, s.instance, thing_lut))


_CITY_LUT = np.full(256, VOID, np.uint8)
for _lid, _tid in CITYSCAPES_LABELID_TO_TRAINID.items():
    _CITY_LUT[_lid] = _tid


def cityscapes_panoptic(label_ids: np.ndarray, instance_ids: Optional[np.ndarray]):
    """Cityscapes labelIds (+ instanceIds = labelId*1000 + k) -> (semantic trainIds, panoptic).

    Thing pixels without an instance id and ignoreInEval labels are void."""
    city = get_taxonomy("cityscapes")
    semantic = _CITY_LUT[label_ids]
    pan = semantic.astype(np.int32)
    if instance_ids is not None:
        has_inst = instance_ids >= 1000
        k = (instance_ids % 1000).astype(np.int32) + 1
        thing = city.thing_lut[semantic] & (semantic != VOID)
        pan = np.where(thing & has_inst, semantic.astype(np.int32) * 1000 + k, pan)
        no_inst = thing & ~has_inst
        semantic = np.where(no_inst, VOID, semantic).astype(np.uint8)
        pan = np.where(no_inst, -1, pan)
    pan = np.where(semantic == VOID, -1, pan).astype(np.int32)
    return semantic, pan


def cityscapes_images(root, split: str):
    """(folder, sorted frame files, unlabelled) of a Cityscapes split: leftImg8bit, or the sequence set, which
    has no labels."""
    root = Path(root)
    image_dir, sequence = root / "leftImg8bit" / split, False
    if not image_dir.is_dir():
        image_dir, sequence = root / "leftImg8bit_sequence" / split, True
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise FileNotFoundError(f"no Cityscapes frames under {root}: expected {root}/leftImg8bit/{split}/<city>/"
                                f"*_leftImg8bit.png (or leftImg8bit_sequence)")
    return image_dir, images, sequence


def cityscapes_label_files(root, split: str, image_dir: Path, image: Path):
    """The gtFine labelIds and instanceIds files of a frame (either may be missing)."""
    base = str(image.relative_to(image_dir)).replace("_leftImg8bit.png", "")
    gt = Path(root) / "gtFine" / split
    return gt / f"{base}_gtFine_labelIds.png", gt / f"{base}_gtFine_instanceIds.png"


def read_cityscapes_labels(label_ids: Path, instance_ids: Path, shape):
    """(semantic trainIds, panoptic) of one frame's gtFine files."""
    return cityscapes_panoptic(read_labels(label_ids, 8, shape).astype(np.uint8),
                               read_labels(instance_ids, 32, shape).astype(np.int32) if instance_ids.is_file()
                               else None)


def cityscapes_frames(root, split: str, max_frames: Optional[int] = None) -> Iterator[DatasetFrame]:
    image_dir, images, sequence = cityscapes_images(root, split)
    images = images[:max_frames] if max_frames else images
    keys = []
    for p in images:
        city, seq, frame = p.name.split("_")[:3]
        keys.append((f"{city}_{seq}", int(frame)))
    for p, stamp in zip(images, _sequence_stamps(keys, 17.0)):
        rgb = read_rgb(p)
        semantic = panoptic = None
        if not sequence:
            lab, inst = cityscapes_label_files(root, split, image_dir, p)
            if lab.is_file():
                semantic, panoptic = read_cityscapes_labels(lab, inst, rgb.shape)
        yield DatasetFrame(stamp, rgb, semantic, panoptic)


def _read_calib(path: Path, cam: str = "02"):
    values = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            key, rest = line.split(":", 1)
            try:
                values[key.strip()] = [float(v) for v in rest.split()]
            except ValueError:
                continue
    return values.get(f"K_{cam}"), values.get(f"P_rect_{cam}")


def _kitti_time(line: str) -> int:
    import datetime
    day, clock = line.strip().split(" ")
    hms, frac = (clock.split(".") + ["0"])[:2]
    base = datetime.datetime.strptime(f"{day} {hms}", "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return int(base.timestamp()) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])


def kitti_label_files(root, split: str, image: Path):
    """The semantic and instance files of a frame of KITTI's semantics set (either may be missing)."""
    return Path(root) / split / "semantic" / image.name, Path(root) / split / "instance" / image.name


def read_kitti_labels(semantic_file: Path, instance_file: Path, shape):
    """(semantic trainIds, panoptic) of one frame of KITTI's semantics set (Cityscapes label ids; instance =
    label * 256 + k)."""
    label_ids = read_labels(semantic_file, 8, shape).astype(np.uint8)
    inst = None
    if instance_file.is_file():
        raw = read_labels(instance_file, 16, shape).astype(np.int32)
        k = raw % 256
        inst = np.where(k > 0, (raw // 256) * 1000 + k - 1, raw // 256)
    return cityscapes_panoptic(label_ids, inst)


def kitti_frames(root, split: str = "training", max_frames: Optional[int] = None) -> Iterator[DatasetFrame]:
    """A raw drive (<date>/<drive>_sync/image_02) or the semantics set (training/image_2 + semantic + instance)."""
    root = Path(root)
    if (root / split / "image_2").is_dir():
        images = sorted((root / split / "image_2").glob("*.png"))[:max_frames or None]
        for i, p in enumerate(images):
            rgb = read_rgb(p)
            semantic = panoptic = None
            sem_path, inst_path = kitti_label_files(root, split, p)
            if sem_path.is_file():
                semantic, panoptic = read_kitti_labels(sem_path, inst_path, rgb.shape)
            yield DatasetFrame(EPOCH_NS + i * 100_000_000, rgb, semantic, panoptic)
        return
    drives = sorted(root.glob("**/image_02/data"))
    if not drives:
        raise FileNotFoundError(f"no KITTI data under {root}: expected <date>/<drive>_sync/image_02/data/*.png or "
                                f"{split}/image_2 (semantics set)")
    count = 0
    for data in drives:
        cam_dir = data.parent
        stamps = [_kitti_time(line) for line in (cam_dir / "timestamps.txt").read_text().splitlines() if line.strip()]
        calib = next((p / "calib_cam_to_cam.txt" for p in (cam_dir.parents[1], cam_dir.parents[2])
                      if (p / "calib_cam_to_cam.txt").is_file()), None)
        k, proj = _read_calib(calib) if calib else (None, None)
        for p, stamp in zip(sorted(data.glob("*.png")), stamps):
            yield DatasetFrame(stamp, read_rgb(p), k=k, p=proj)
            count += 1
            if max_frames and count >= max_frames:
                return


def step_panoptic(rgb_map: np.ndarray, track_ids: dict) -> tuple:
    """A KITTI-STEP panoptic PNG (R = Cityscapes trainId, 255 void; G * 256 + B = the object's track id, the
    same over its sequence) -> (semantic, panoptic) in our convention. Track ids become 1..999 by first
    appearance in the sequence (`track_ids` carries them from frame to frame: label * 1000 + id must stay
    under the next label); thing pixels without an id (STEP's crowd regions) are void, as in our Cityscapes
    conversion."""
    city = get_taxonomy("cityscapes")
    semantic = rgb_map[..., 0].astype(np.uint8)
    track = rgb_map[..., 1].astype(np.int64) * 256 + rgb_map[..., 2]
    known = semantic != VOID
    thing = known & city.thing_lut[np.where(known, semantic, 0)]
    tracked = thing & (track > 0)
    keys, which = np.unique(semantic[tracked].astype(np.int64) * 65536 + track[tracked], return_inverse=True)
    for key in keys.tolist():  # (class, track id) pairs new to the sequence get the next id
        if key not in track_ids:
            if len(track_ids) >= 999:
                raise ValueError("more than 999 tracks in one KITTI-STEP sequence; the panoptic map "
                                 "(label * 1000 + instance) holds at most 999")
            track_ids[key] = len(track_ids) + 1
    pan = semantic.astype(np.int32)
    pan[tracked] = semantic[tracked].astype(np.int32) * 1000 + np.array([track_ids[k] for k in keys.tolist()],
                                                                         np.int32)[which.ravel()]
    crowd = thing & (track == 0)
    semantic = np.where(crowd, VOID, semantic).astype(np.uint8)
    pan = np.where(crowd | ~known, -1, pan).astype(np.int32)
    return semantic, pan


def read_step_map(path, shape) -> np.ndarray:
    """A KITTI-STEP panoptic PNG exactly as stored: an RGB image of its frame's size whose R values are
    Cityscapes trainIds or 255 (a greyscale or palette image, or another size, is refused: converted to RGB
    it would give classes and track ids that look valid)."""
    from ..images import open_image
    expected = ("expected an RGB PNG of the frame's size (R = Cityscapes trainId 0..18 or 255 void, G * 256 + B = "
                "track id)")
    with open_image(path) as im:
        if im.mode != "RGB":
            raise ValueError(f"KITTI-STEP panoptic map '{path}' is a {im.mode} image; {expected}")
        a = np.asarray(im).copy()
    if a.shape != tuple(shape):
        raise ValueError(f"KITTI-STEP panoptic map '{path}' is {a.shape[1]}x{a.shape[0]}, its frame "
                         f"{shape[1]}x{shape[0]}; {expected}")
    bad = (a[..., 0] > 18) & (a[..., 0] != VOID)
    if bad.any():
        raise ValueError(f"KITTI-STEP panoptic map '{path}' holds class {int(a[..., 0][bad][0])}; {expected}")
    return a


def kitti_step_frames(root, split: str = "val", max_frames: Optional[int] = None,
                      sequence: Optional[str] = None) -> Iterator[DatasetFrame]:
    """One sequence of KITTI-STEP (deeplab2's layout: images/<split>/<seq>/<frame>.png and
    panoptic_maps/<split>/<seq>/<frame>.png), at KITTI's 10 frames a second; its ground truth's instance
    ids are track ids, so replay --stq can score tracking. One bag per sequence: tracks are per sequence."""
    root = Path(root)
    image_root = root / "images" / split
    if not image_root.is_dir():
        raise FileNotFoundError(f"no KITTI-STEP split '{split}' under {root}: expected images/{split}/<sequence>/"
                                f"<frame>.png (and panoptic_maps/{split}/... for ground truth)")
    sequences = sorted(p.name for p in image_root.iterdir() if p.is_dir())
    if sequence is None:
        if len(sequences) != 1:
            raise ValueError(f"KITTI-STEP {split} holds {len(sequences)} sequences ({', '.join(sequences[:12])}"
                             f"{' ...' if len(sequences) > 12 else ''}); choose one with --sequence (one bag per "
                             f"sequence: tracks are scored per sequence)")
        sequence = sequences[0]
    if sequence not in sequences:
        raise ValueError(f"--sequence {sequence}: not in KITTI-STEP {split}; expected one of {', '.join(sequences)}")
    images = sorted((image_root / sequence).glob("*.png"))[:max_frames or None]
    if not images:
        raise FileNotFoundError(f"no frames in {image_root / sequence}: expected <frame>.png files")
    track_ids: dict = {}
    for i, path in enumerate(images):
        rgb = read_rgb(path)
        semantic = panoptic = None
        gt = root / "panoptic_maps" / split / sequence / path.name
        if gt.is_file():
            semantic, panoptic = step_panoptic(read_step_map(gt, rgb.shape), track_ids)
        yield DatasetFrame(EPOCH_NS + i * 100_000_000, rgb, semantic, panoptic)


def video_frames(path, split=None, max_frames: Optional[int] = None) -> Iterator[DatasetFrame]:
    """A dashcam / camera clip (anything ffmpeg decodes: mp4, mov, mkv, avi): every frame, stamped at its time in
    the clip (frame / fps), without ground truth: replay then gives the overlay video, speed and latency. A clip
    that stops decoding part-way is an error naming the frame (a bag of its first part would look complete)."""
    import imageio.v2 as imageio
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"video '{path}' {'is a folder' if path.is_dir() else 'does not exist'}; expected a video "
                         f"file (mp4, mov, mkv, avi)")
    try:
        reader = imageio.get_reader(str(path), "ffmpeg")
        meta = reader.get_meta_data()
    except Exception as e:  # imageio / ffmpeg raise their own types for what they cannot open
        raise ValueError(f"video '{path}' cannot be read ({first_line(e)}); expected a video file ffmpeg decodes (an mp4 cut "
                         f"short loses the index it keeps at its end)") from None
    fps = float(meta.get("fps") or 0)
    if not fps > 0:
        fps = 30.0  # a stream without a rate: frames 1/30 s apart, as a camera would send them
    duration = float(meta.get("duration") or 0)
    i = 0
    try:
        frames = iter(reader)
        while not max_frames or i < max_frames:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except Exception as e:
                reason = first_line(e)
                raise ValueError(f"video '{path}': frame {i + 1} cannot be decoded ({reason}); convert the part "
                                 f"before it with --max-frames {i}" if i else
                                 f"video '{path}' has no frame that decodes ({reason})") from None
            yield DatasetFrame(EPOCH_NS + int(round(i * 1e9 / fps)), np.ascontiguousarray(frame[..., :3]))
            i += 1
        # a clip cut short (a recorder losing power) may just stop decoding: its header still says how long it was
        # (a container's duration may run a little past its last frame, e.g. with its audio: half a second or 2 % is
        # allowed before the clip counts as cut)
        missing = duration - i / fps if 0 < duration < float("inf") else 0.0
        if not (max_frames and i >= max_frames) and missing > max(0.5, 0.02 * duration):
            raise ValueError(f"video '{path}' ends after {i} frames ({i / fps:.1f} s) of the {duration:.1f} s its header "
                             f"announces: it is cut short; convert the part that decodes with --max-frames {i}")
    finally:
        reader.close()


# dataset -> (frames, default split, label set of its ground truth)
CONVERTERS = {"camvid": (camvid_frames, "val", "camvid"), "cityscapes": (cityscapes_frames, "val", "cityscapes"),
              "kitti": (kitti_frames, "training", "cityscapes"), "kitti-step": (kitti_step_frames, "val", "cityscapes"),
              "video": (video_frames, None, None)}


def convert(kind: str, src, out, split: Optional[str] = None, storage: str = "mcap",
            max_frames: Optional[int] = None, overwrite: bool = False, sequence: Optional[str] = None) -> int:
    if kind not in CONVERTERS:
        raise ValueError(f"unknown dataset '{kind}', expected one of {', '.join(CONVERTERS)}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames {max_frames}: expected a positive number of frames (leave it out for all)")
    if kind == "video" and split:
        raise ValueError(f"--split {split}: a video has no splits; expected it only with a dataset folder")
    if sequence is not None and kind != "kitti-step":
        raise ValueError(f"--sequence {sequence}: only KITTI-STEP has sequences to choose; expected it with "
                         f"kitti-step")
    frames, default_split, labels = CONVERTERS[kind]
    chosen = {"sequence": sequence} if kind == "kitti-step" else {}
    return write_bag(frames(src, split or default_split, max_frames, **chosen), out, storage, overwrite,
                     total=max_frames, labels=labels, inputs=(src,))
