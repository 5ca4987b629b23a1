"""When the multivariant playlist offers the subtitles rendition."""

from __future__ import annotations

from pathlib import Path

from townhall.captions.live import HOST_OFF_FILE, TRANSCRIPT_FILE, LiveCaptions, captions_offered
from townhall.config import Settings


def test_not_live_spaces(tmp_path: Path) -> None:
    on, off = Settings(data_dir=tmp_path, captions=True), Settings(data_dir=tmp_path)
    directory = tmp_path / "rec"
    directory.mkdir()
    assert captions_offered(on, None, directory)  # will be captioned once live
    assert not captions_offered(off, None, directory)
    (directory / HOST_OFF_FILE).write_bytes(b"")
    assert not captions_offered(on, None, directory)  # the host turned them off
    (directory / TRANSCRIPT_FILE).write_bytes(b"")
    assert captions_offered(off, None, directory)  # an ended space's transcript


def test_live_space_offers_while_its_captions_run(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, captions=True)
    live = LiveCaptions("s", settings, tmp_path)
    assert not captions_offered(settings, live, tmp_path)  # not started: off
    live._status = "starting"
    assert captions_offered(settings, live, tmp_path)
    live.host_enabled = False
    assert not captions_offered(settings, live, tmp_path)
    live.host_enabled, live._status = True, "unavailable"
    assert not captions_offered(settings, live, tmp_path)
