"""Cost of one ``FastPath.decide`` call (no server): a part, a live playlist,
a blocking reload already answerable. CPU time (process_time), best of 40
rounds of 20,000 calls, so other load on the machine matters less. Run it with
two trees' PYTHONPATH side by side to compare:

    PYTHONPATH=/work/main/src .venv/bin/python benchmarks/decide_cost.py
    PYTHONPATH=src .venv/bin/python benchmarks/decide_cost.py
"""

import time
import timeit
from types import SimpleNamespace

from townhall.config import Settings
from townhall.media.cmaf import Part, SegmentEnd
from townhall.origin import rules

try:
    from townhall.origin.fanout import ProgressiveHub
except ImportError:  # a tree before the split
    from townhall.origin.window import ProgressiveHub  # type: ignore[attr-defined,no-redef]
from townhall.origin.window import LiveWindow


def main() -> None:
    w = LiveWindow(
        epoch=0,
        first_msn=0,
        history=(),
        sample_rate_hz=48000,
        part_duration_samples=480,
        segment_parts=2,
        window_segments=3,
    )
    w.init_segment = b"x" * 16
    for msn in range(4):
        for i in range(2):
            part = Part(msn=msn, index=i, data=bytes(100), start_samples=0, duration_samples=480)
            w.publish_part(part, 0.0)
        w.end_segment(SegmentEnd(msn=msn, start_samples=0, duration_samples=960, part_count=2))
    hub = ProgressiveHub(max_lag_ms=1000, burst_ms=0, frame_ms=20)
    prog = SimpleNamespace(window=w, ended=False, progressive=hub)
    fp = rules.FastPath(Settings(), lambda s: prog if s == "abcdefgh2345" else None)  # type: ignore[arg-type,return-value]
    part_path = b"/spaces/abcdefgh2345/part/3.1.m4s"
    playlist = b"/spaces/abcdefgh2345/live.m3u8"
    cases = (
        ("part", part_path, None),
        ("playlist", playlist, None),
        ("blocking", playlist, b"_HLS_msn=3&_HLS_part=1"),
    )
    for name, path, query in cases:
        assert fp.decide(b"GET", path, query) is not None

        def call(path: bytes = path, query: bytes | None = query) -> object:
            return fp.decide(b"GET", path, query)

        best = min(timeit.repeat(call, number=20000, repeat=40, timer=time.process_time))
        print(f"{name:9s} {best / 20000 * 1e9:6.0f} ns")


if __name__ == "__main__":
    main()
