"""ADTS framing: parse/serialize round trips and exact error messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from townhall.media import adts
from townhall.media.adts import AdtsError, AudioConfig

LC_48K_MONO = AudioConfig(object_type=2, sample_rate_hz=48000, channels=1)


def test_header_bytes_match_the_standard_layout() -> None:
    frame = adts.serialize(b"\x01\x02\x03", LC_48K_MONO)
    # FFF1: sync, MPEG-4, layer 0, no CRC; 0x4C: LC, 48 kHz; then channel 1, length 10
    assert frame[:2] == b"\xff\xf1"
    assert frame[2] == 0b01_0011_0_0
    assert len(frame) == 10
    assert ((frame[3] & 0x3) << 11) | (frame[4] << 3) | (frame[5] >> 5) == 10
    assert frame[7:] == b"\x01\x02\x03"


@given(
    payload=st.binary(min_size=0, max_size=2000),
    object_type=st.integers(1, 4),
    rate=st.sampled_from(adts.SAMPLE_RATES_HZ),
    channels=st.integers(0, 7),
)
def test_round_trip(payload: bytes, object_type: int, rate: int, channels: int) -> None:
    config = AudioConfig(object_type, rate, channels)
    data = adts.serialize(payload, config)
    frame, end = adts.parse(data)
    assert end == len(data)
    assert frame == adts.AdtsFrame(config, payload)


def test_stream_of_frames_round_trips() -> None:
    payloads = [bytes([i]) * (i * 7) for i in range(20)]
    stream = b"".join(adts.serialize(p, LC_48K_MONO) for p in payloads)
    assert [f.payload for f in adts.parse_all(stream)] == payloads


def test_parse_skips_crc_when_present() -> None:
    data = bytearray(adts.serialize(b"\xaa\xbb", LC_48K_MONO))
    data[1] &= 0xFE  # protection present: 2 CRC bytes follow the header
    data[7:7] = b"\x12\x34"
    length = len(data)
    data[3] = (data[3] & 0xFC) | (length >> 11)
    data[4] = (length >> 3) & 0xFF
    data[5] = ((length & 0x7) << 5) | (data[5] & 0x1F)
    frame, _ = adts.parse(bytes(data))
    assert frame.payload == b"\xaa\xbb"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xf1\x4c", "Truncated ADTS header at byte 0: 3 bytes, need 7."),
        (b"\x00" * 7, "No ADTS syncword at byte 0."),
        (
            adts.serialize(b"abcdef", LC_48K_MONO)[:-2],
            "Truncated ADTS frame at byte 0: length 13, 11 bytes left.",
        ),
        (b"\xff\xf1\x7c\x40\x01\x1f\xfc", "Reserved ADTS sampling frequency index 15 at byte 0."),
    ],
)
def test_parse_errors_name_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(AdtsError) as info:
        adts.parse(data)
    assert info.value.detail == message
    assert info.value.status == 400


def test_serialize_refuses_what_adts_cannot_carry() -> None:
    with pytest.raises(AdtsError, match="object types 1-4"):
        adts.serialize(b"", AudioConfig(5, 48000, 1))
    with pytest.raises(AdtsError, match="44000 Hz"):
        adts.serialize(b"", AudioConfig(2, 44000, 1))
    with pytest.raises(AdtsError, match="too large"):
        adts.serialize(b"\0" * 9000, LC_48K_MONO)


def test_audio_specific_config() -> None:
    assert adts.config_from_asc(b"\x11\x88") == LC_48K_MONO
    assert adts.config_from_asc(b"\x11\x88\x56\xe5\x00") == LC_48K_MONO
    assert adts.config_from_asc(b"\x12\x10") == AudioConfig(2, 44100, 2)
    with pytest.raises(AdtsError, match="too short"):
        adts.config_from_asc(b"\x11")
    with pytest.raises(AdtsError, match="reserved sampling frequency index 13"):
        adts.config_from_asc(b"\x16\x88")
