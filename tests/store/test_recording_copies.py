"""Which copy of a recording a node serves when other copies lie on the same
machine (HTTP workers: the supervisor's DATA_DIR/recordings and each worker's
own folder, ``store.recordings.best_copy``). Real files in real folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from townhall.config import Settings
from townhall.server.workers import worker_settings
from townhall.store.recordings import RecordingStore, SegmentRecord, best_copy, served_copy

SPACE = "s1"
RATE = 48_000
SEGMENT = 4 * RATE


def record(folder: Path, segments: int, *, ended: bool, missing: int = 0) -> RecordingStore:
    """A recording of ``segments`` segments under ``folder`` (``missing`` of
    them, at the start, listed as missing), ended or still live."""
    store = RecordingStore(folder, SPACE)
    manifest = store.begin_epoch(store.create(RATE), 0, b"init")
    for msn in range(segments):
        seg = SegmentRecord(msn, 0, msn * SEGMENT, SEGMENT, 1e9 + msn * 4, False, 8)
        if msn < missing:
            manifest = manifest.with_missing(seg)
            store.writer.write("manifest.json", manifest.to_json())
        else:
            manifest = store.append_segment(manifest, seg, b"seg%d" % msn)
    if ended:
        manifest = store.mark_ended(manifest)
    store.close()
    return store


def test_without_copies_the_own_folder_even_when_empty(tmp_path: Path) -> None:
    assert best_copy(tmp_path / "own", (), SPACE).dir == tmp_path / "own" / SPACE


def test_a_whole_ended_own_copy_is_served_without_looking_further(tmp_path: Path) -> None:
    record(tmp_path / "own", 3, ended=True)
    record(tmp_path / "other", 5, ended=True)  # longer, but ours is final and whole
    assert best_copy(tmp_path / "own", (tmp_path / "other",), SPACE).dir.parent == tmp_path / "own"


@pytest.mark.parametrize(
    ("own", "other", "served"),
    [
        ((3, False, 0), (5, True, 0), "other"),  # ours is still live (restarted mid-room)
        ((5, True, 2), (5, True, 0), "other"),  # ours has a hole, theirs none
        ((2, True, 0), (5, True, 1), "own"),  # ours is whole: final and nothing missing
        (None, (4, True, 0), "other"),  # made before workers, under DATA_DIR/recordings
        ((4, False, 0), (4, False, 0), "own"),  # a tie keeps ours
        ((4, False, 0), (3, False, 0), "own"),
    ],
)
def test_the_most_complete_copy_is_served(
    tmp_path: Path,
    own: tuple[int, bool, int] | None,
    other: tuple[int, bool, int],
    served: str,
) -> None:
    if own is not None:
        record(tmp_path / "own", own[0], ended=own[1], missing=own[2])
    record(tmp_path / "other", other[0], ended=other[1], missing=other[2])
    store = best_copy(tmp_path / "own", (tmp_path / "empty", tmp_path / "other"), SPACE)
    assert store.dir == tmp_path / served / SPACE
    if served == "other":
        assert store.read_segment(other[0] - 1) == b"seg%d" % (other[0] - 1)


def test_a_copy_that_changes_is_ranked_again(tmp_path: Path) -> None:
    record(tmp_path / "own", 3, ended=False)
    other = record(tmp_path / "other", 2, ended=False)
    copies = (tmp_path / "other",)
    assert best_copy(tmp_path / "own", copies, SPACE).dir.parent == tmp_path / "own"
    manifest = other.load()
    assert manifest is not None
    other.mark_ended(manifest)  # the other copy is final now
    path = other.dir / "manifest.json"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a coarse clock
    assert best_copy(tmp_path / "own", copies, SPACE).dir.parent == tmp_path / "other"


def test_an_unreadable_copy_is_passed_over(tmp_path: Path) -> None:
    record(tmp_path / "own", 2, ended=False)
    broken = tmp_path / "other" / SPACE
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_bytes(b'{"space_id": "s1", "ended": tr')  # torn
    assert best_copy(tmp_path / "own", (tmp_path / "other",), SPACE).dir.parent == tmp_path / "own"


async def test_served_copy_off_the_loop(tmp_path: Path) -> None:
    record(tmp_path / "other", 2, ended=True)
    store = await served_copy(tmp_path / "own", (tmp_path / "other",), SPACE)
    assert store.dir == tmp_path / "other" / SPACE


def test_each_worker_names_the_other_copies_on_its_machine(tmp_path: Path) -> None:
    scaled = {
        "database_url": "postgresql+asyncpg://db/x",
        "redis_url": "redis://x",
        "bus_enabled": True,
    }
    settings = Settings(data_dir=tmp_path, recording_copies="/mnt/old", **scaled)  # type: ignore[arg-type]
    second = worker_settings(settings, 2, 8123, 3)
    assert second.recordings_dir == tmp_path / "workers" / "w2" / "recordings"
    assert second.recording_copy_dirs == (
        tmp_path / "recordings",
        tmp_path / "workers" / "w1" / "recordings",
        tmp_path / "workers" / "w3" / "recordings",
        Path("/mnt/old"),
    )
