"""A pure stand-in for an owner's program: drives a LiveWindow with synthetic
parts and records the bus messages it would publish."""

from __future__ import annotations

from townhall.media.cmaf import Part, SegmentEnd
from townhall.origin.bus import Closed, Entry, EpochStart, Message, PartPublished, SegmentEnded
from townhall.origin.window import LiveWindow
from townhall.store.recordings import SegmentRecord

RATE = 48000
PART_SAMPLES = 24000
PARTS = 4
WINDOW_SEGMENTS = 3


class FakeOwner:
    def __init__(
        self, *, epoch: int = 0, first_msn: int = 0, history: tuple[SegmentRecord, ...] = ()
    ) -> None:
        self.window = LiveWindow(
            epoch=epoch,
            first_msn=first_msn,
            history=history,
            sample_rate_hz=RATE,
            part_duration_samples=PART_SAMPLES,
            segment_parts=PARTS,
            window_segments=WINDOW_SEGMENTS,
            init_segment=b"init-%d" % epoch,
        )
        self.messages: list[Message] = [
            EpochStart(epoch, first_msn, b"init-%d" % epoch, RATE, PART_SAMPLES, PARTS)
        ]
        self.samples = history[-1].start_samples + history[-1].duration_samples if history else 0
        self.msn = first_msn
        self.index = 0
        self.pdt = 1_700_000_000.0 + self.samples / RATE

    def part(self) -> None:
        data = b"part %d.%d of epoch %d " % (self.msn, self.index, self.window.epoch) * 20
        part = Part(self.msn, self.index, data, self.samples, PART_SAMPLES)
        pdt = self.pdt + 0.0
        self.window.publish_part(part, pdt)
        self.messages.append(PartPublished(part, pdt))
        self.samples += PART_SAMPLES
        self.pdt += PART_SAMPLES / RATE
        self.index += 1
        if self.index == PARTS:
            end = SegmentEnd(
                self.msn, self.samples - PARTS * PART_SAMPLES, PARTS * PART_SAMPLES, PARTS
            )
            record, _ = self.window.end_segment(end)
            self.messages.append(SegmentEnded(end, record))
            self.msn += 1
            self.index = 0

    def parts(self, n: int) -> None:
        for _ in range(n):
            self.part()

    def close(self, *, ended: bool) -> None:
        self.window.close(ended=ended)
        self.messages.append(Closed(ended))


def entries(messages: list[Message], first_seq: int = 1) -> list[Entry]:
    return [Entry(first_seq + i, m) for i, m in enumerate(messages)]


def same_answers(a: LiveWindow, b: LiveWindow) -> None:
    """Both windows answer every listener request with the same bytes."""
    for kind in ("ll", "ll-skip", "plain"):
        assert a.playlist(kind) == b.playlist(kind), kind
    assert a.position == b.position
    assert a.init_segment == b.init_segment
    for msn in range(max(0, a.open_msn - WINDOW_SEGMENTS - 1), a.open_msn + 1):
        assert a.segment(msn) == b.segment(msn), msn
        for index in range(PARTS):
            assert a.part(msn, index) == b.part(msn, index), (msn, index)
