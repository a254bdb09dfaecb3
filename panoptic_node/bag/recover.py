"""Recover the complete messages of an MCAP recording that was cut short (power lost in the car, the
recorder killed): no footer, no summary, often no metadata.yaml. Neither rosbags nor `ros2 bag`
opens such a file; this walks its records from the start, keeps every complete message (loose or in
complete chunks) and writes them to a new, valid bag.

MCAP records are `opcode (1 byte) | length (uint64 LE) | content`; the ones read here: Schema 0x03,
Channel 0x04, Message 0x05, Chunk 0x06 (whose content holds more records, maybe compressed).
"""
import struct
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Callable, Dict, Iterator, Tuple

from rosbags.rosbag2.storage_mcap import decompress

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


def _string(b: BytesIO) -> str:
    (n,) = struct.unpack("<I", b.read(4))
    return b.read(n).decode()


def _records(data: bytes) -> Iterator[Tuple[int, bytes]]:
    """(opcode, content) of every complete record; stops at the first one that runs past the end."""
    pos = 0
    while pos + 9 <= len(data):
        op, length = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
        if pos + 9 + length > len(data):
            return
        yield op, bytes(data[pos + 9:pos + 9 + length])
        pos += 9 + length


def _complete_prefix(data: bytes) -> int:
    """Bytes up to the end of the last complete record (after the magic)."""
    pos = len(MAGIC)
    while pos + 9 <= len(data):
        length = struct.unpack_from("<Q", data, pos + 1)[0]
        if pos + 9 + length > len(data):
            break
        pos += 9 + length
    return pos


def scan(data: bytes, on_message: Callable[[dict, int, bytes], None], schemas: dict, channels: dict,
         on_bad_chunk: Callable[[str], None]) -> None:
    for op, content in _records(data):
        b = BytesIO(content)
        if op == SCHEMA:
            (sid,) = struct.unpack("<H", b.read(2))
            name, encoding = _string(b), _string(b)
            (n,) = struct.unpack("<I", b.read(4))
            schemas[sid] = {"name": name, "encoding": encoding, "data": b.read(n).decode()}
        elif op == CHANNEL:
            cid, sid = struct.unpack("<HH", b.read(4))
            channels[cid] = {"topic": _string(b), "schema": sid, "encoding": _string(b)}
        elif op == MESSAGE:
            cid, _seq, log_time, _pub = struct.unpack("<HIQQ", b.read(22))
            if cid in channels:
                on_message(channels[cid], log_time, content[22:])
        elif op == CHUNK:
            _start, _end, size, crc = struct.unpack("<QQQI", b.read(28))
            compression = _string(b)
            (n,) = struct.unpack("<Q", b.read(8))
            try:
                inner = decompress(b.read(n), compression, size, crc)
            except Exception as e:  # a damaged chunk: its messages are lost, the others are not
                on_bad_chunk(str(e))
                continue
            scan(inner, on_message, schemas, channels, on_bad_chunk)


def mcap_file(path) -> Path:
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.mcap"))
        if len(files) != 1:
            raise BagError(f"'{path}' holds {len(files)} .mcap files; expected one (pass the file itself)")
        return files[0]
    return path


def recover(src, out, overwrite: bool = False, log=print) -> Recovered:
    """Every complete message of the (possibly truncated) MCAP file `src` into a new bag `out`.
    Topics whose message type this package cannot write (unknown definitions) are reported and left out."""
    path = mcap_file(src)
    if not path.is_file():
        raise BagError(f"'{path}' does not exist; expected an .mcap file or a bag folder holding one")
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise BagError(f"'{path}' is not an MCAP file (no MCAP magic at its start)")
    store = typestore()
    result = Recovered(lost_bytes=len(data) - _complete_prefix(data))
    schemas, channels = {}, {}
    writer = BagWriter(out, storage="mcap", overwrite=overwrite)
    connections = {}

    def on_message(channel: dict, log_time: int, payload: bytes) -> None:
        topic = channel["topic"]
        if topic in result.skipped_topics:
            return
        if topic not in connections:
            msgtype = schemas.get(channel["schema"], {}).get("name", "")
            if channel["encoding"] != "cdr" or msgtype not in store.types:
                result.skipped_topics[topic] = f"type '{msgtype or '?'}' ({channel['encoding']}) is not known here"
                return
            connections[topic] = writer.writer.add_connection(topic, msgtype, typestore=store)
        writer.writer.write(connections[topic], log_time, payload)
        result.messages += 1
        result.per_topic[topic] = result.per_topic.get(topic, 0) + 1

    try:
        def on_bad_chunk(reason: str) -> None:
            result.bad_chunks += 1

        scan(memoryview(data)[len(MAGIC):_complete_prefix(data)], on_message, schemas, channels, on_bad_chunk)
        if not result.messages:
            raise BagError(f"'{path}' holds no complete message that can be recovered")
    except BaseException:
        writer.abort()
        raise
    writer.close()
    log(f"recovered {result.messages} messages ({', '.join(f'{t}: {n}' for t, n in sorted(result.per_topic.items()))})"
        f" into {out}; {result.lost_bytes} bytes of incomplete tail dropped"
        + (f", {result.bad_chunks} damaged chunks skipped" if result.bad_chunks else ""))
    for topic, why in result.skipped_topics.items():
        log(f"left out {topic}: {why}")
    return result
