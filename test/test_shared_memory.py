"""Room in /dev/shm for Fast DDS's segment and the segments killed processes left (panoptic_node/shared_memory.py),
on folders made here. The node saying so on a real graph, in a small /dev/shm: test_node_graph.py."""
import fcntl
import os
import re
from pathlib import Path

from panoptic_node.dds_profile import profile_in_effect
from panoptic_node.doctor import NOTE, OK, shared_memory_check
from panoptic_node.shared_memory import (FASTDDS_DEFAULT_SEGMENT, SEGMENT_OVERHEAD, scan, segment_size,
                                         shared_memory_problem, stale_segments_note)

CONFIG = Path(__file__).resolve().parents[1] / "config"
PROFILE = """<?xml version="1.0"?>
<profiles{xmlns}>
  <transport_descriptors>{descriptors}</transport_descriptors>
  <participant profile_name="p" is_default_profile="true"><rtps>
    <userTransports><transport_id>t</transport_id></userTransports>
    <useBuiltinTransports>{builtin}</useBuiltinTransports>
  </rtps></participant>
</profiles>"""
SHM = "<transport_descriptor><transport_id>t</transport_id><type>SHM</type>{size}</transport_descriptor>"
UDP = "<transport_descriptor><transport_id>u</transport_id><type>UDPv4</type></transport_descriptor>"


XMLNS = ' xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"'


def profile(tmp_path, descriptors, builtin="false", xmlns=XMLNS):
    path = tmp_path / f"profile_{len(list(tmp_path.iterdir()))}.xml"
    path.write_text(PROFILE.format(xmlns=xmlns, descriptors=descriptors, builtin=builtin))
    return path


def test_the_segment_a_profile_makes(tmp_path):
    for shipped in ("fastdds_large_images.xml", "fastdds_large_images_shm.xml"):
        assert segment_size(CONFIG / shipped) == 32 * 1024 * 1024
    assert segment_size(None) == FASTDDS_DEFAULT_SEGMENT  # Fast DDS's defaults: its builtin SHM transport
    for xmlns in ("", XMLNS):
        sized = profile(tmp_path, SHM.format(size="<segment_size>1000</segment_size>"), xmlns=xmlns)
        assert segment_size(sized) == 1000
    assert segment_size(profile(tmp_path, SHM.format(size=""))) == FASTDDS_DEFAULT_SEGMENT  # SHM, size not given
    assert segment_size(profile(tmp_path, UDP)) is None  # its own transports, none of them shared memory
    assert segment_size(profile(tmp_path, UDP, builtin="true")) == FASTDDS_DEFAULT_SEGMENT  # the builtin SHM too


def test_the_profile_in_effect_is_the_one_the_environment_names():
    assert profile_in_effect({}) is None
    assert profile_in_effect({"FASTDDS_DEFAULT_PROFILES_FILE": "/a.xml"}) == Path("/a.xml")
    assert profile_in_effect({"FASTRTPS_DEFAULT_PROFILES_FILE": "/b.xml", "FASTDDS_DEFAULT_PROFILES_FILE": "/a.xml"}) \
        == Path("/b.xml")


def segment(folder: Path, name: str, size: int, lock_file=True) -> Path:
    (folder / name).write_bytes(b"\1" * size)
    if lock_file:
        (folder / f"{name}_el").touch()
    return folder / name


def test_stale_segments_are_those_whose_lock_nobody_holds(tmp_path):
    """As Fast DDS's `fastdds shm clean` decides: a living owner holds `<segment>_el` locked."""
    alive = segment(tmp_path, "fastrtps_0123456789abcdef", 300_000)
    dead = segment(tmp_path, "fastrtps_fedcba9876543210", 200_000)
    newer = segment(tmp_path, "fastdds_00000000000000aa", 100_000)  # Fast DDS 3's name
    segment(tmp_path, "fastrtps_port7411", 50_000)  # ports are not segments
    segment(tmp_path, "fastrtps_00000000000000bb", 1, lock_file=False)  # a segment Fast DDS failed to make
    (tmp_path / "other_file").write_bytes(b"x" * 1000)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    held = os.open(tmp_path / f"{alive.name}_el", os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # as the owning process does
    try:
        seen = scan(tmp_path)
        assert seen.stale == [newer, dead] and seen.free > 0
        assert 300_000 <= seen.stale_bytes < 320_000  # in blocks: what they hold in memory
        note = stale_segments_note(tmp_path)
        assert re.fullmatch(rf"{re.escape(str(tmp_path))} \([0-9]+ MB free\): 2 segments left by killed or crashed "
                            r"Fast DDS processes hold 3[0-9][0-9] kB: `fastdds shm clean` removes them \(a reboot does "
                            r"too\)", note), note
    finally:
        os.close(held)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # looked at, nothing removed
    assert len(scan(tmp_path).stale) == 3  # its owner gone too
    assert scan(tmp_path / "absent") is None


def test_no_room_for_the_segment_is_one_line_naming_what_fills_the_folder(tmp_path):
    shm = tmp_path / "shm"
    shm.mkdir()
    free = scan(shm).free
    fits = profile(tmp_path, SHM.format(size=f"<segment_size>{int(free / SEGMENT_OVERHEAD / 2)}</segment_size>"))
    assert shared_memory_problem(fits, {}, shm) is None
    too_big = profile(tmp_path, SHM.format(size=f"<segment_size>{free * 2}</segment_size>"))
    line = shared_memory_problem(too_big, {}, shm)
    assert line.startswith(f"{shm} has ") and "Fast DDS will report 'SHM Transport is not supported' and fall back " \
                                                "to UDP" in line and "\n" not in line
    assert "left by" not in line  # nothing stale to name
    segment(shm, "fastrtps_fedcba9876543210", 2_000_000)
    line = shared_memory_problem(too_big, {}, shm)
    assert line.endswith("; 1 segment left by killed or crashed Fast DDS processes holds 2 MB: `fastdds shm clean` "
                         "removes them (a reboot does too)")
    assert shared_memory_problem(profile(tmp_path, UDP), {}, shm) is None  # no shared memory asked for
    assert shared_memory_problem(too_big, {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}, shm) is None


def test_doctor_says_what_fills_shared_memory(tmp_path):
    shm = tmp_path / "shm"
    shm.mkdir()
    clean = shared_memory_check({}, shm)
    assert clean.verdict == OK and "MB free, no segment left by a killed process" in clean.finding
    segment(shm, "fastrtps_fedcba9876543210", 10)
    stale = shared_memory_check({}, shm)
    assert stale.verdict == NOTE and "1 segment left by killed or crashed Fast DDS processes" in stale.finding
    too_big = profile(tmp_path, SHM.format(size=f"<segment_size>{scan(shm).free * 2}</segment_size>"))
    full = shared_memory_check({"FASTRTPS_DEFAULT_PROFILES_FILE": str(too_big)}, shm)
    assert full.verdict == NOTE and "SHM Transport is not supported" in full.finding
    (tmp_path / "broken.xml").write_text("<profiles")
    unread = shared_memory_check({"FASTRTPS_DEFAULT_PROFILES_FILE": str(tmp_path / "broken.xml")}, shm)
    assert unread.verdict == NOTE and unread.finding.startswith("not checked: the Fast DDS profile does not read")
    assert shared_memory_check({}, tmp_path / "absent").finding.endswith("not found: Fast DDS's shared memory is not "
                                                                         "checked here")
