"""ADTS framing (ISO/IEC 13818-7 / 14496-3): AAC packets as a self-delimiting
byte stream, for the progressive ``live.aac`` stream that any internet-radio
player reads.

Pure ``parse`` / ``serialize`` pair, plus the AudioSpecificConfig reader that
gives the three fields an ADTS header needs. Headers are written without CRC
(protection_absent = 1); parsing accepts both.
"""

from __future__ import annotations

from dataclasses import dataclass

from townhall.errors import BadRequest

SAMPLE_RATES_HZ = (
    96000,
    88200,
    64000,
    48000,
    44100,
    32000,
    24000,
    22050,
    16000,
    12000,
    11025,
    8000,
    7350,
)
HEADER_BYTES = 7
CRC_BYTES = 2
MAX_FRAME_BYTES = (1 << 13) - 1  # frame_length is a 13-bit field


class AdtsError(BadRequest):
    """Malformed ADTS or AudioSpecificConfig; ``detail`` says which field."""


@dataclass(frozen=True, slots=True)
class AudioConfig:
    """What an ADTS header carries: MPEG-4 audio object type (2 = AAC-LC),
    sample rate and channel configuration."""

    object_type: int
    sample_rate_hz: int
    channels: int


@dataclass(frozen=True, slots=True)
class AdtsFrame:
    config: AudioConfig
    payload: bytes


def config_from_asc(asc: bytes) -> AudioConfig:
    """Read object type, sample rate and channels from an AudioSpecificConfig."""
    if len(asc) < 2:
        raise AdtsError(f"AudioSpecificConfig too short: {len(asc)} bytes, need at least 2.")
    bits = int.from_bytes(asc[:5].ljust(5, b"\0"), "big")
    pos = 40

    def take(n: int) -> int:
        nonlocal pos
        pos -= n
        return (bits >> pos) & ((1 << n) - 1)

    object_type = take(5)
    if object_type == 31:
        object_type = 32 + take(6)
    index = take(4)
    if index == 15:
        if len(asc) < 5:
            raise AdtsError("AudioSpecificConfig with an explicit sample rate needs 5 bytes.")
        sample_rate_hz = take(24)
    elif index < len(SAMPLE_RATES_HZ):
        sample_rate_hz = SAMPLE_RATES_HZ[index]
    else:
        raise AdtsError(f"AudioSpecificConfig has reserved sampling frequency index {index}.")
    channels = take(4)
    return AudioConfig(object_type=object_type, sample_rate_hz=sample_rate_hz, channels=channels)


def serialize(payload: bytes, config: AudioConfig) -> bytes:
    """One ADTS frame (header without CRC + payload)."""
    if not 1 <= config.object_type <= 4:
        raise AdtsError(f"ADTS can carry audio object types 1-4 only, not {config.object_type}.")
    if config.sample_rate_hz not in SAMPLE_RATES_HZ:
        raise AdtsError(f"ADTS cannot signal a sample rate of {config.sample_rate_hz} Hz.")
    if not 0 <= config.channels <= 7:
        raise AdtsError(f"ADTS channel configuration must be 0-7, not {config.channels}.")
    length = HEADER_BYTES + len(payload)
    if length > MAX_FRAME_BYTES:
        raise AdtsError(f"AAC packet of {len(payload)} bytes is too large for one ADTS frame.")
    index = SAMPLE_RATES_HZ.index(config.sample_rate_hz)
    header = (
        (0xFFF << 44)  # syncword
        | (0 << 43)  # MPEG-4
        | (0 << 41)  # layer
        | (1 << 40)  # protection absent
        | ((config.object_type - 1) << 38)
        | (index << 34)
        | (config.channels << 30)
        | (length << 13)
        | (0x7FF << 2)  # buffer fullness: variable bit rate
        | 0  # one raw data block
    )
    return header.to_bytes(HEADER_BYTES, "big") + payload


def parse(data: bytes | memoryview, offset: int = 0) -> tuple[AdtsFrame, int]:
    """Parse one frame at ``offset``; returns it and the offset after it."""
    view = memoryview(data)
    if len(view) - offset < HEADER_BYTES:
        raise AdtsError(
            f"Truncated ADTS header at byte {offset}: {len(view) - offset} bytes, need {HEADER_BYTES}."
        )
    header = int.from_bytes(view[offset : offset + HEADER_BYTES], "big")
    if header >> 44 != 0xFFF:
        raise AdtsError(f"No ADTS syncword at byte {offset}.")
    if (header >> 41) & 0x3:
        raise AdtsError(f"ADTS layer field must be 0 at byte {offset}.")
    protection_absent = (header >> 40) & 1
    object_type = ((header >> 38) & 0x3) + 1
    index = (header >> 34) & 0xF
    if index >= len(SAMPLE_RATES_HZ):
        raise AdtsError(f"Reserved ADTS sampling frequency index {index} at byte {offset}.")
    channels = (header >> 30) & 0x7
    length = (header >> 13) & 0x1FFF
    blocks = (header & 0x3) + 1
    if blocks != 1:
        raise AdtsError(f"ADTS frames with {blocks} raw data blocks are not supported.")
    start = HEADER_BYTES + (0 if protection_absent else CRC_BYTES)
    if length < start:
        raise AdtsError(f"ADTS frame length {length} is shorter than its header at byte {offset}.")
    if offset + length > len(view):
        raise AdtsError(
            f"Truncated ADTS frame at byte {offset}: length {length}, {len(view) - offset} bytes left."
        )
    config = AudioConfig(
        object_type=object_type, sample_rate_hz=SAMPLE_RATES_HZ[index], channels=channels
    )
    payload = bytes(view[offset + start : offset + length])
    return AdtsFrame(config=config, payload=payload), offset + length


def parse_all(data: bytes | memoryview) -> list[AdtsFrame]:
    """Every frame of a complete ADTS stream; raises on trailing garbage."""
    frames: list[AdtsFrame] = []
    offset = 0
    while offset < len(data):
        frame, offset = parse(data, offset)
        frames.append(frame)
    return frames
