"""Recover the complete messages of a recording that was cut short (power lost in the car, the
recorder killed). An MCAP file then has no footer, no summary and usually no metadata.yaml; neither
rosbags nor `ros2 bag` opens it. This walks its records from the start, keeps every complete message
(loose or in complete chunks) and writes them to a new, valid bag. A SQLite (.db3) recording survives
the cut but lacks its metadata.yaml; its readable rows are copied the same way.

MCAP records are `opcode (1 byte) | length (uint64 LE) | content`; the ones read here: Schema 0x03,
Channel 0x04, Message 0x05, Chunk 0x06 (whose content holds more records, maybe compressed).
"""
import contextlib
import mmap
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import yaml
import zstandard
from rosbags.rosbag2.storage_mcap import decompress
from tqdm import tqdm

from .types import typestore
from .writer import BagError, BagWriter

MAGIC = b"\x89MCAP0\r\n"
SCHEMA, CHANNEL, MESSAGE, CHUNK = 0x03, 0x04, 0x05, 0x06


@dataclass
class Recovered:
    messages: int = 0
    per_topic: Dict[str, int] = field(default_factory=dict)
    skipped_topics: Dict[str, str] = field(default_factory=dict)  # topic -> why
    lost_bytes: int = 0  # the incomplete tail
    bad_chunks: int = 0  # complete chunks that do not decompress (their messages are lost)
    skipped_files: Dict[str, str] = field(default_factory=dict)  # a split recording's unreadable file -> why
    decompressed: int = 0  # messages rosbag2 compressed one by one (--compression-mode message)
    bad_messages: int = 0  # such messages that do not decompress


# topic, message type, encoding, log time, payload, the publishers' QoS offers (rosbag2's YAML, or "")
Message = Tuple[str, str, str, int, bytes, str]


def _string(b: BytesIO) -> str:
    (n,) = struct.unpack("<I", b.read(4))
    return b.read(n).decode()


def _metadata(b: BytesIO) -> Dict[str, str]:
    """A record's string map (a channel's metadata: rosbag2 keeps the publishers' QoS offers there)."""
    (n,) = struct.unpack("<I", b.read(4))
    entries, out = BytesIO(b.read(n)), {}
    while entries.tell() < n:
        key = _string(entries)
        out[key] = _string(entries)
    return out


def _spans(data, pos: int = 0) -> Iterator[Tuple[int, int, int]]:
    """(opcode, content start, end) of every complete record from `pos`; stops at the first one that
    runs past the end of `data`."""
    while pos + 9 <= len(data):
        end = pos + 9 + struct.unpack_from("<Q", data, pos + 1)[0]
        if end > len(data):
            return
        yield data[pos], pos + 9, end
        pos = end


def _records(data) -> Iterator[Tuple[int, bytes]]:
    for op, start, end in _spans(data):
        yield op, bytes(data[start:end])


def scan(data, schemas: dict, channels: dict, result: Recovered) -> Iterator[Message]:
    """(topic, message type, encoding, log time, payload) of every complete message in `data`."""
    for op, content in _records(data):
        b = BytesIO(content)
        if op == SCHEMA:
            (sid,) = struct.unpack("<H", b.read(2))
            name, encoding = _string(b), _string(b)
            (n,) = struct.unpack("<I", b.read(4))
            schemas[sid] = {"name": name, "encoding": encoding, "data": b.read(n).decode()}
        elif op == CHANNEL:
            cid, sid = struct.unpack("<HH", b.read(4))
            channels[cid] = {"topic": _string(b), "schema": sid, "encoding": _string(b), "qos": _metadata(b).get(
                "offered_qos_profiles", "")}
        elif op == MESSAGE:
            cid, _seq, log_time, _pub = struct.unpack("<HIQQ", b.read(22))
            if cid in channels:
                ch = channels[cid]
                yield (ch["topic"], schemas.get(ch["schema"], {}).get("name", ""), ch["encoding"], log_time, content[22:],
                       ch["qos"])
        elif op == CHUNK:
            _start, _end, size, crc = struct.unpack("<QQQI", b.read(28))
            compression = _string(b)
            (n,) = struct.unpack("<Q", b.read(8))
            try:
                inner = decompress(b.read(n), compression, size, crc)
            except Exception:  # a damaged chunk: its messages are lost, the others are not
                result.bad_chunks += 1
                continue
            yield from scan(inner, schemas, channels, result)


def mcap_messages(path: Path, result: Recovered) -> Iterator[Message]:
    """Checked now (before anything is written), read lazily; the file is mapped, not loaded, so a
    recording of many GB needs no more memory than its largest chunk."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise BagError(f"'{path}' is not an MCAP file (no MCAP magic at its start)")
        data = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    whole = len(data) > 2 * len(MAGIC) and data[-len(MAGIC):] == MAGIC  # an intact file ends with it too
    body = data[:len(data) - len(MAGIC)] if whole else data
    end = max((e for _, _, e in _spans(body, len(MAGIC))), default=len(MAGIC))
    tail = unfinished_chunk(body, end)
    kept = max((e for _, _, e in _spans(tail)), default=0)  # its complete records
    result.lost_bytes += len(body) - end - kept  # summed over a split recording's files

    def messages():
        schemas, channels = {}, {}
        yield from scan(data[len(MAGIC):end], schemas, channels, result)
        yield from scan(tail[:kept], schemas, channels, result)

    return messages()


def unfinished_chunk(body, pos: int):
    """The records written so far into the chunk the recorder was writing when it was cut (the record
    at `pos` that runs past the end): an uncompressed chunk holds whole message records one after the
    other, so every complete one in it is recovered. A compressed one cannot be read in part: nothing."""
    head = 9 + 28 + 4
    if pos + head > len(body) or body[pos] != CHUNK:
        return body[0:0]
    (n,) = struct.unpack_from("<I", body, pos + 9 + 28)
    start = pos + head + n + 8  # after the compression string and the compressed size
    if n or start > len(body):
        return body[0:0]
    return body[start:]


def sqlite_messages(path: Path, result: Recovered) -> Iterator[Message]:
    """A .db3 without its metadata.yaml (rosbag2 writes that file last): the rows SQLite can read, in
    the order they were written; a damaged page ends the stream (counted as one bad chunk).
    Checked now (before anything is written), read lazily."""
    import sqlite3
    import tempfile
    # a writer killed mid-transaction leaves a hot journal, which SQLite must roll back before it reads
    # (and cannot in read-only mode: "attempt to write a readonly database"). The recording is the
    # user's and never changed: the rollback happens in a copy of the file and its journal
    work = Path(tempfile.mkdtemp(prefix="panoptic_node_recover_"))
    for suffix in ("", "-journal", "-wal"):
        if Path(f"{path}{suffix}").is_file():
            shutil.copyfile(f"{path}{suffix}", work / f"copy.db3{suffix}")
    try:
        con = sqlite3.connect(str(work / "copy.db3"))
        columns = {row[1] for row in con.execute("PRAGMA table_info(topics)")}
        qos = "offered_qos_profiles" if "offered_qos_profiles" in columns else "''"
        topics = {row[0]: row[1:] for row in
                  con.execute(f"SELECT id, name, type, serialization_format, {qos} FROM topics")}
        rows = con.execute("SELECT topic_id, timestamp, data FROM messages ORDER BY id")
    except sqlite3.DatabaseError as e:
        shutil.rmtree(work, ignore_errors=True)
        raise BagError(f"'{path}' is not a readable rosbag2 SQLite file ({e})") from None

    def read():
        try:
            for topic_id, stamp, payload in rows:
                if topic_id in topics:
                    name, msgtype, encoding, offers = topics[topic_id]
                    yield name, msgtype, encoding, int(stamp), bytes(payload), offers or ""
        except sqlite3.DatabaseError:
            result.bad_chunks += 1
        finally:
            con.close()
            shutil.rmtree(work, ignore_errors=True)

    return read()


def _offers(text: str) -> list:
    """The recorded QoS offers of a topic (kept, so `ros2 bag play` of the recovered bag offers /tf_static
    or a latched topic as the recording did); unreadable ones are dropped, not fatal."""
    from rosbags.rosbag2.metadata import parse_qos
    try:
        return parse_qos(text) if text else []
    except Exception:
        return []


ZSTD = ".zstd"  # rosbag2's --compression-mode file: each split file compressed whole once it is closed


def _uncompressed_name(file: Path) -> Path:
    """bag_0.db3.zstd -> bag_0.db3 (what the file holds); any other name as it is."""
    return Path(file.name[:-len(ZSTD)] if file.name.endswith(ZSTD) else file.name)


def _split_of(file: Path) -> Tuple[str, int]:
    """rosbag2 names a split recording's files <name>_0.mcap, <name>_1.mcap, ... (--max-bag-size,
    --max-bag-duration; <name>_0.db3.zstd with file compression): (name, index), so that <name>_10 sorts
    after <name>_9."""
    stem = _uncompressed_name(file).stem
    found = re.fullmatch(r"(.*)_(\d+)", stem)
    return (found[1], int(found[2])) if found else (stem, -1)


def _listed_files(folder: Path) -> List[str]:
    """The storage files a bag folder's metadata.yaml lists (none when it has no readable one: a recording
    cut short has none)."""
    try:
        info = yaml.safe_load((folder / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        return [str(name) for name in info.get("relative_file_paths") or []]
    except Exception:
        return []


def storage_files(path) -> Tuple[List[Path], List[str]]:
    """The recording's storage files in the order they were written, and the ones its metadata.yaml lists
    that are missing. A car records in splits (a file per GB or per minute): every file of the folder is one
    recording, recovered into one bag."""
    path = Path(path)
    if not path.is_dir():
        if not path.is_file():
            raise BagError(f"'{path}' does not exist; expected an .mcap or .db3 file, or a bag folder holding them")
        return [path], []
    # a file-compressed recording cut short: the files closed before the cut compressed, the last one not
    mcap = list(path.glob("*.mcap")) + list(path.glob(f"*.mcap{ZSTD}"))
    db3 = list(path.glob("*.db3")) + list(path.glob(f"*.db3{ZSTD}"))
    if not mcap and not db3:
        raise BagError(f"'{path}' holds no .mcap or .db3 file; expected a recording")
    names = {_split_of(f)[0] for f in mcap + db3}
    if (mcap and db3) or len(names) > 1:
        listed = ", ".join(sorted(f.name for f in mcap + db3))
        raise BagError(f"'{path}' holds files of more than one recording ({listed}); expected one recording's "
                       f"<name>_0, <name>_1, ... (pass a file itself)")
    files = sorted(mcap or db3, key=_split_of)
    listed = _listed_files(path)
    missing = [name for name in listed if not (path / name).is_file()]
    return files, missing


def recover(src, out, overwrite: bool = False, log=print) -> Recovered:
    """Every complete message of the (possibly truncated) recording `src` (.mcap, or .db3 without its
    metadata.yaml) into a new bag `out`. Topics whose message type this package cannot write (unknown
    definitions) are reported and left out."""
    paths, missing = storage_files(src)
    store = typestore()
    result = Recovered()
    sqlite = _uncompressed_name(paths[0]).suffix == ".db3"
    opened = _open_each(paths, sqlite, result)
    next(opened)  # the first file checked now, before anything is written: one that cannot be read is refused
    writer = BagWriter(out, storage="sqlite3" if sqlite else "mcap", overwrite=overwrite, inputs=(src,))
    # a cut recording says nothing of how many messages it holds: the bar counts them and their rate
    bar = tqdm(desc="recover", unit=" messages")
    try:
        for topic, msgtype, encoding, stamp, payload, offers in opened:
            bar.update()
            if topic in result.skipped_topics:
                continue
            if encoding != "cdr" or msgtype not in store.types:
                result.skipped_topics[topic] = f"type '{msgtype or '?'}' ({encoding}) is not known here"
                continue
            if payload[:4] == ZSTD_FRAME:  # without metadata.yaml nothing else says the messages are compressed
                try:
                    payload = _decompressed_message(payload)
                except zstandard.ZstdError:
                    result.bad_messages += 1
                    continue
                result.decompressed += 1
            # the offers matter once: they are recorded with the topic, at its first message
            writer.write_raw(topic, msgtype, payload, stamp, _offers(offers) if topic not in writer.connections else ())
            result.messages += 1
            result.per_topic[topic] = result.per_topic.get(topic, 0) + 1
        if not result.messages:
            raise BagError(f"'{src}' holds no complete message that can be recovered")
    except BaseException:
        writer.abort()  # what was recovered stays in <out>.partial, visible, never mistaken for complete
        if not result.messages:
            shutil.rmtree(writer.partial, ignore_errors=True)  # nothing worth keeping
        raise
    finally:
        bar.close()
    writer.close()
    files = f" from {len(paths)} files" if len(paths) > 1 else ""
    log(f"recovered {result.messages} messages ({', '.join(f'{t}: {n}' for t, n in sorted(result.per_topic.items()))})"
        f"{files} into {out}; {result.lost_bytes} bytes of incomplete tail dropped"
        + (f", {result.bad_chunks} damaged chunks skipped" if result.bad_chunks else "")
        + (f"; {result.decompressed} messages were compressed one by one (--compression-mode message) and are "
           f"written uncompressed" if result.decompressed else "")
        + (f"; {result.bad_messages} compressed messages that do not decompress left out" if result.bad_messages
           else ""))
    for topic, why in result.skipped_topics.items():
        log(f"left out {topic}: {why}")
    for name, why in result.skipped_files.items():
        log(f"left out {name}: {why}")
    for name in missing:
        log(f"not recovered: {name}, listed in {Path(src) / 'metadata.yaml'}, is not there (its messages are not "
            f"in {out})")
    return result


def _open_each(paths: List[Path], sqlite: bool, result: Recovered) -> Iterator[Message]:
    """Every message of the files in turn. Primed once (next()) to open the first readable file, so that a
    recording none of whose files can be read is refused before anything is written; in a split recording a
    file that cannot be read is left out and named (the parts before and after it are still worth having)."""
    opened, first_error = False, None
    for path in paths:
        # a folder to decompress into only for a file-compressed part
        with (tempfile.TemporaryDirectory(prefix="panoptic_node_recover_") if path.name.endswith(ZSTD)
              else contextlib.nullcontext()) as work:
            try:
                readable = _decompressed(path, Path(work)) if work else path
                messages = sqlite_messages(readable, result) if sqlite else mcap_messages(readable, result)
            except BagError as e:
                if len(paths) == 1:
                    raise
                result.skipped_files[path.name] = str(e)
                first_error = first_error or e
                continue
            if not opened:
                opened = True
                yield None  # primed
            yield from messages
    if not opened:
        raise first_error


# a zstd frame's magic number: a message rosbag2 compressed alone starts with it, a CDR message (0x00, then
# its encapsulation kind) never does
ZSTD_FRAME = b"\x28\xb5\x2f\xfd"


def _decompressed_message(payload) -> bytes:
    """One message rosbag2 compressed alone; a decompressobj, since a frame need not say its own size."""
    return zstandard.ZstdDecompressor().decompressobj().decompress(bytes(payload))


def _decompressed(path: Path, work: Path) -> Path:
    """A file-compressed split file (complete when compressed) decompressed into `work`, streamed."""
    out = work / _uncompressed_name(path)
    try:
        with open(path, "rb") as src, open(out, "wb") as dst:
            zstandard.ZstdDecompressor().copy_stream(src, dst)
    except zstandard.ZstdError as e:
        raise BagError(f"'{path}' does not decompress as zstd ({e})") from None
    return out
