"""car.launch.py's choice of Fast DDS profile (panoptic_node/dds_profile.py) and what the shipped
profiles declare. The profiles carrying frames on a real graph: test_node_graph.py."""
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from panoptic_node.dds_profile import UDP_RECEIVE_MIN_BYTES, choose_profile, profile_env, read_rmem_max

CONFIG = Path(__file__).resolve().parents[1] / "config"
NS = {"f": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}


@pytest.mark.parametrize("rmem, expected", [(4 * 1024 * 1024, "fastdds_large_images.xml"),
                                            (UDP_RECEIVE_MIN_BYTES, "fastdds_large_images.xml"),
                                            (UDP_RECEIVE_MIN_BYTES - 1, "fastdds_large_images_shm.xml"),
                                            (212992, "fastdds_large_images_shm.xml")])
def test_auto_receives_over_udp_only_where_the_kernel_allows_large_socket_buffers(rmem, expected):
    for choice in ("", "auto"):
        path, why = choose_profile(choice, CONFIG, environ={}, rmem_max=rmem)
        assert path == CONFIG / expected and path.is_file()
        assert str(rmem) in why
        if expected.endswith("_shm.xml"):  # and says how to change that
            assert f"sysctl -w net.core.rmem_max={UDP_RECEIVE_MIN_BYTES}" in why


def test_auto_where_the_limit_cannot_be_read_keeps_shared_memory(tmp_path, monkeypatch):
    import panoptic_node.dds_profile as dds
    monkeypatch.setattr(dds, "RMEM_MAX", tmp_path / "absent")
    assert read_rmem_max(tmp_path / "absent") is None
    path, why = choose_profile("auto", CONFIG, environ={})
    assert path.name == "fastdds_large_images_shm.xml" and "cannot be read" in why
    (tmp_path / "rmem").write_text("4194304\n")
    assert read_rmem_max(tmp_path / "rmem") == 4194304


def test_the_users_own_settings_win():
    env = {"FASTRTPS_DEFAULT_PROFILES_FILE": "/home/me/dds.xml"}
    assert choose_profile("auto", CONFIG, environ=env, rmem_max=1 << 30) == \
        (None, "Fast DDS profile from your environment (FASTRTPS_DEFAULT_PROFILES_FILE=/home/me/dds.xml)")
    path, why = choose_profile("large_images", CONFIG, environ={"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"})
    assert path is None and "rmw_cyclonedds_cpp" in why
    assert choose_profile("none", CONFIG, environ={})[0] is None


def test_by_name_by_file_and_a_bad_choice(tmp_path):
    assert choose_profile("large_images_shm", CONFIG, environ={}, rmem_max=1 << 30)[0] == \
        CONFIG / "fastdds_large_images_shm.xml"
    mine = tmp_path / "mine.xml"
    mine.write_text("<profiles/>")
    assert choose_profile(str(mine), CONFIG, environ={})[0] == mine
    with pytest.raises(ValueError) as err:
        choose_profile("udp_receive", CONFIG, environ={})
    msg = str(err.value)
    assert "\n" not in msg and "'udp_receive' is not a file" in msg and "auto, none, large_images" in msg
    assert profile_env(mine) == {"FASTRTPS_DEFAULT_PROFILES_FILE": str(mine), "FASTDDS_DEFAULT_PROFILES_FILE": str(mine)}
    assert profile_env(None) == {}


def test_a_node_started_by_hand_takes_what_the_launch_would(monkeypatch):
    """ros2 run panoptic_node panoptic_node: auto unless PANOPTIC_NODE_DDS_PROFILE (which car.launch.py sets to
    its own choice) says otherwise; a profile exported already, or another RMW, left alone; a bad choice
    refused in the launch's words."""
    from panoptic_node import dds_profile as dds
    from panoptic_node.dds_profile import node_environment
    monkeypatch.setattr(dds, "read_rmem_max", lambda: 4 << 20)
    env, why = node_environment(CONFIG, environ={})
    assert env == profile_env(CONFIG / "fastdds_large_images.xml") and "large_images: receiving over UDP" in why
    assert node_environment(CONFIG, environ={"PANOPTIC_NODE_DDS_PROFILE": "none"})[0] == {}
    assert node_environment(CONFIG, environ={"PANOPTIC_NODE_DDS_PROFILE": "large_images_shm"})[0] == \
        profile_env(CONFIG / "fastdds_large_images_shm.xml")
    env, why = node_environment(CONFIG, environ={"PANOPTIC_NODE_DDS_PROFILE": "auto",
                                                 "FASTDDS_DEFAULT_PROFILES_FILE": "/etc/dds.xml"})
    assert env == {} and "from your environment" in why
    assert node_environment(CONFIG, environ={"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"})[0] == {}
    with pytest.raises(ValueError, match="dds_profile 'fast' is not a file"):
        node_environment(CONFIG, environ={"PANOPTIC_NODE_DDS_PROFILE": "fast"})


def participant(name):
    root = ET.parse(CONFIG / name).getroot()
    parts = root.findall("f:participant", NS)
    assert len(parts) == 1 and parts[0].get("is_default_profile") == "true"
    transports = {t.findtext("f:transport_id", namespaces=NS): t for t in root.iter(f"{{{NS['f']}}}transport_descriptor")}
    return parts[0].find("f:rtps", NS), transports


@pytest.mark.parametrize("name", ["fastdds_large_images.xml", "fastdds_large_images_shm.xml"])
def test_each_profile_holds_several_frames_in_shared_memory_and_replaces_the_builtin_transports(name):
    rtps, transports = participant(name)
    assert rtps.findtext("f:useBuiltinTransports", namespaces=NS) == "false"
    used = [t.text for t in rtps.findall("f:userTransports/f:transport_id", NS)]
    kinds = {transports[t].findtext("f:type", namespaces=NS): transports[t] for t in used}
    assert set(kinds) == {"SHM", "UDPv4"}
    frame = 480 * 360 * 3
    assert int(kinds["SHM"].findtext("f:segment_size", namespaces=NS)) >= 8 * frame
    assert int(kinds["UDPv4"].findtext("f:receiveBufferSize", namespaces=NS)) >= UDP_RECEIVE_MIN_BYTES


def test_large_images_receives_user_data_over_udp_alone():
    """What makes a driver nobody configured send over UDP: the node's readers offer no shared-memory locator."""
    rtps, _ = participant("fastdds_large_images.xml")
    locators = rtps.findall("f:defaultUnicastLocatorList/f:locator", NS)
    assert locators and all([c.tag.split("}")[1] for c in loc] == ["udpv4"] for loc in locators)
    shm_rtps, _ = participant("fastdds_large_images_shm.xml")
    assert shm_rtps.find("f:defaultUnicastLocatorList", NS) is None  # every transport receives there
