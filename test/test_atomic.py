"""Outputs written through a .partial name: complete files appear whole, a failure leaves nothing
new and never touches what already had the final name."""
import json

import pytest

from panoptic_node.atomic import atomic_path, partial_path, write_json


def test_partial_name_keeps_the_suffix(tmp_path):
    assert partial_path(tmp_path / "overlay.mp4") == tmp_path / "overlay.partial.mp4"


def test_complete_write_appears_under_the_final_name(tmp_path):
    out = tmp_path / "a.bin"
    with atomic_path(out) as tmp:
        tmp.write_bytes(b"abc")
        assert not out.exists()  # not visible until the block completes
    assert out.read_bytes() == b"abc" and not tmp.exists()


def test_failure_leaves_nothing_new_and_keeps_the_old_file(tmp_path):
    out = tmp_path / "metrics.json"
    write_json({"pq": 0.5}, out)
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(out) as tmp:
            tmp.write_text("{half")
            raise KeyboardInterrupt
    assert json.loads(out.read_text()) == {"pq": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
