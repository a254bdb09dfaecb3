"""Opening a rosbag2 bag one of whose topics has a message definition that does not read.

rosbags' AnyReader builds one type store from every definition a bag carries and refuses the whole bag when
one does not parse or does not match the hash recorded with it ("Message type 'my_car_msgs/msg/CanFrame'
hash mismatch ..."): a car's bag with one vendor message it cannot read could not be replayed at all, though
replay reads only its camera frames. This reads the bag through rosbags' rosbag2 Reader and takes each
topic's types one by one: a topic whose definition does not read is left out, with why, and the others read
as before. Only tried when AnyReader refuses the bag.
"""
from typing import Dict, Tuple

from rosbags.interfaces import MessageDefinitionFormat
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

IDL_SEPARATOR = "=" * 80 + "\n"


def _one_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def definition_types(connection) -> dict:
    """The types a connection's recorded definition declares (its own and those it uses), {} when it has none."""
    fmt, data = connection.msgdef.format, connection.msgdef.data
    if fmt == MessageDefinitionFormat.MSG:
        return get_types_from_msg(data, connection.msgtype)
    if fmt == MessageDefinitionFormat.IDL:
        types = {}
        for idl in (data.split(IDL_SEPARATOR)[1:] if data.startswith(f"{IDL_SEPARATOR}IDL: ") else [data]):
            types.update(get_types_from_idl(idl.split("\n", 1)[1] if idl.startswith("IDL: ") else idl))
        return types
    return {}


def readable_types(connections, default: Typestore) -> Tuple[Typestore, Dict[str, str]]:
    """A type store of every topic whose definition reads (parses, agrees with the types taken before it and
    with its recorded hash); a topic recorded without a definition takes `default`'s types. And the topics left
    out: {topic: why}."""
    accepted, unreadable = {}, {}

    def trial(types: dict) -> Typestore:
        store = get_typestore(Stores.EMPTY)
        store.register({**accepted, **types})  # raises when a type is already there with another definition
        return store

    def left_out(c, why: str) -> None:
        unreadable[c.topic] = f"the message definition of {c.msgtype} recorded with it does not read ({why})"

    undefined = []  # recorded without a definition (Humble's SQLite bags): read with `default`'s types, below
    for c in connections:
        try:
            types = definition_types(c)
            if not types:
                undefined.append(c)
                continue
            store = trial(types)
            if c.digest and c.digest.startswith("RIHS01_") and store.hash_rihs01(c.msgtype) != c.digest:
                raise ValueError(f"its definition hashes to {store.hash_rihs01(c.msgtype)}, not {c.digest} as recorded")
            accepted.update(types)
        except KeyError as e:  # the hash of a type whose definition uses one it does not carry
            left_out(c, f"it uses {e.args[0]}, which it does not define")
        except Exception as e:  # rosbags' parser and type store raise several kinds
            left_out(c, _one_line(e))
    if undefined:
        known = [c for c in undefined if c.msgtype in default.types]
        for c in undefined:
            if c not in known:
                left_out(c, f"none is recorded, and {c.msgtype} is not a type known here")
        try:
            trial(default.fielddefs)  # once for them all
            accepted = {**default.fielddefs, **accepted}
        except Exception as e:  # the bag's own definitions disagree with the ones known here
            for c in known:
                left_out(c, f"none is recorded, and the one known here disagrees with the bag's ({_one_line(e)})")
    store = get_typestore(Stores.EMPTY)
    store.register(accepted)
    return store, unreadable


class TolerantReader:
    """What BagReader uses of AnyReader (connections, messages, deserialize, start and end time, close), over
    a rosbag2 bag whose topics' types are taken one by one."""

    def __init__(self, path, default: Typestore):
        self._bag = Reader(path)
        self._bag.open()
        try:
            self.typestore, self.unreadable = readable_types(self._bag.connections, default)
        except BaseException:
            self._bag.close()
            raise
        self.connections = [c for c in self._bag.connections if c.topic not in self.unreadable]
        self.start_time, self.end_time = self._bag.start_time, self._bag.end_time

    def messages(self, connections, start=None, stop=None):
        # none named means all, as AnyReader reads it: all that read, never the topics left out
        return self._bag.messages(connections=connections or self.connections, start=start, stop=stop)

    def deserialize(self, raw, msgtype: str):
        return self.typestore.deserialize_cdr(raw, msgtype)

    def close(self) -> None:
        self._bag.close()
