"""kill -9 recovery: a program in a subprocess records a tone, is SIGKILLed
mid-segment; a new program on the same directory keeps everything up to the
last finished segment and continues in a new discontinuity."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.live.test_program import SEGMENT_SAMPLES, SPACE, feed, recorded_audio, small_settings
from tests.media.hls_validator import check_reload, validate
from townhall.live.program import Program
from townhall.media.signals import dominant_frequency, tone

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from townhall.config import Settings
    from townhall.live.program import Program
    from townhall.media.signals import tone

    async def main() -> None:
        settings = Settings(data_dir=Path(sys.argv[1]), part_ms=100, segment_parts=4, window_segments=3)
        program = Program(sys.argv[2], settings)
        await program.start()
        pcm = tone(1000, 10.0)
        frames = [pcm[i : i + 960] for i in range(0, len(pcm) - 959, 960)]
        n = 0
        announced = False
        while True:
            program.push_frame(frames[n % len(frames)])
            n += 1
            if n % 10 == 0:
                await program.drained()
                manifest = program.recording.load()
                if not announced and manifest is not None and len(manifest.segments) >= 5:
                    print("READY", len(manifest.segments), flush=True)
                    announced = True
            # after READY, go on at real time so a segment is in progress when killed
            await asyncio.sleep(0.02 if announced else 0)

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_kill_9_loses_at_most_the_segment_in_progress(tmp_path: Path) -> None:
    settings = small_settings(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SCRIPT,
        str(settings.data_dir),
        SPACE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
        assert line.startswith(b"READY"), (line, await proc.stderr.read() if proc.stderr else b"")
        await asyncio.sleep(0.3)  # mid-segment (segments are 0.43 s here)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    program = Program(SPACE, settings)
    store = program.recording
    survived = store.load()
    assert survived is not None and not survived.ended
    assert len(survived.segments) >= 5
    assert [s.msn for s in survived.segments] == list(range(len(survived.segments)))
    samples = recorded_audio(store)
    assert len(samples) == len(survived.segments) * SEGMENT_SAMPLES
    assert dominant_frequency(samples[4800:]) == pytest.approx(1000, abs=5)

    await program.start()
    try:
        assert program.window is not None
        before = validate(program.window.playlist("plain"), expect="plain")
        assert program.window.open_msn == survived.next_msn
        await feed(program, tone(1000, 1.0))
        after = validate(program.window.playlist("ll"), expect="ll")
        check_reload(before, after)
        resumed = after.segments[len(survived.segments)]
        assert resumed.msn == survived.next_msn
        assert resumed.discontinuity and resumed.map_uri == "init/1.mp4"
    finally:
        await program.finish()
    ended = store.load()
    assert ended is not None and ended.ended
    assert ended.segments[: len(survived.segments)] == survived.segments
    vod = validate(program.window.playlist("ll"), expect="vod")
    assert len(vod.segments) == len(ended.segments)
