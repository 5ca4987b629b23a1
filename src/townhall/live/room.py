"""One live space at run time: its Stage (speakers, mixer, the 20 ms clock)
feeding its Program (encoder, packager, origin window, recorder).

The stage calls ``program.push_frame`` once per mixer frame; nothing a listener
does reaches the stage.
"""

from __future__ import annotations

import logging

import numpy as np

from townhall.captions.live import LiveCaptions
from townhall.config import Settings
from townhall.live.program import Program
from townhall.live.stage import Stage
from townhall.media.mixer import Frame

log = logging.getLogger("townhall.media")


class Room:
    """Stage + Program for one space. Start order: program, then stage; stop in reverse."""

    def __init__(self, space_id: str, settings: Settings) -> None:
        self.space_id = space_id
        self.settings = settings
        self.program = Program(space_id, settings)
        # no program (live audio, recording) before someone is on the microphone:
        # no "listening live" over silence, no dead air at the start of the replay
        self.on_air = not settings.program_waits_for_host
        self.stage = Stage(space_id, settings, sink=self._frame)
        self.captions = LiveCaptions(space_id, settings, self.program.recording.dir)
        self.program.taps.append(self._caption_tap)

    def _frame(self, pcm: Frame) -> None:
        if not self.on_air:
            if not any(s.connected for s in self.stage.speaker_status().values()):
                return
            self.on_air = True
            log.info("room %s on the air: a microphone is connected", self.space_id)
        self.program.push_frame(pcm)

    def _caption_tap(self, pcm: np.ndarray, start_samples: int) -> None:
        if self.captions.active:
            self.captions.feed(pcm, start_samples, self._loudest_speaker())

    def _loudest_speaker(self) -> str | None:
        mixer = self.stage.mixer
        speaking = [s for s in mixer.speakers() if mixer.speaking(s)]
        return max(speaking, key=mixer.level) if speaking else None

    async def start(self) -> None:
        await self.captions.start()
        await self.program.start()
        await self.stage.start()
        log.info("room %s live", self.space_id)

    async def end(self) -> None:
        """The talk is over: stop the stage, then finish the recording (ENDLIST)."""
        await self.stage.stop()
        await self.program.finish()
        await self.captions.end(drain=True)
        log.info("room %s ended", self.space_id)

    async def suspend(self) -> None:
        """Shutdown of this process, not the end of the talk: stop without ENDLIST,
        so a restart resumes the space in a new discontinuity."""
        await self.stage.stop()
        await self.program.suspend()
        await self.captions.end(drain=False)
