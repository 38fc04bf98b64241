"""The save marker's content when it is held again (it is cut only when not empty)."""

from __future__ import annotations

from pathlib import Path

from stubdom.toolstack.locks import SaveMarker


def test_a_marker_held_again_names_only_the_last_stubdomain(tmp_path: Path) -> None:
    marker = SaveMarker(tmp_path / "dm-5.saved", 5)
    marker.hold(12)
    assert marker.path.read_text() == "12\n"
    marker.hold(3)  # over a longer name: cut first
    assert marker.path.read_text() == "3\n"
    assert marker.in_progress(3) and not marker.in_progress(12)
    marker.remove()
    assert not marker.path.exists()
    marker.hold(7)  # a fresh file: nothing to cut
    assert marker.path.read_text() == "7\n"
    marker.remove()
