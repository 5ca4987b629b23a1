"""The program encoder: a tone in, AAC packets out, the same tone decoded back."""

from __future__ import annotations

import numpy as np
import pytest

from townhall.media import adts
from townhall.media.encoder import AAC_FRAME_SAMPLES, AacEncoder
from townhall.media.signals import dominant_frequency, tone

from .hls_validator import decode_pcm


def encode_all(pcm: np.ndarray, frame: int = 960) -> tuple[AacEncoder, list]:
    encoder = AacEncoder(sample_rate_hz=48000, bitrate_bps=64000)
    packets = []
    for i in range(0, len(pcm), frame):
        packets.extend(encoder.encode(pcm[i : i + frame]))
    packets.extend(encoder.flush())
    return encoder, packets


def test_packets_have_exact_consecutive_pts() -> None:
    encoder, packets = encode_all(tone(1000, 1.0))
    # 48000 samples = 46.875 frames -> 47 frames + the priming frame
    assert len(packets) == 48
    assert packets[0].pts_samples == -encoder.priming_samples
    assert [p.pts_samples for p in packets] == [
        -AAC_FRAME_SAMPLES + i * AAC_FRAME_SAMPLES for i in range(48)
    ]
    assert all(p.duration_samples == AAC_FRAME_SAMPLES for p in packets)


def test_audio_specific_config_is_aac_lc_48k_mono() -> None:
    encoder = AacEncoder(sample_rate_hz=48000, bitrate_bps=64000)
    config = adts.config_from_asc(encoder.audio_specific_config)
    assert config == adts.AudioConfig(object_type=2, sample_rate_hz=48000, channels=1)


def test_tone_round_trip_through_adts() -> None:
    encoder, packets = encode_all(tone(1000, 2.0))
    config = adts.config_from_asc(encoder.audio_specific_config)
    stream = b"".join(adts.serialize(p.data, config) for p in packets)
    samples, rate = decode_pcm(stream, format="aac")
    assert rate == 48000
    assert abs(len(samples) - 2.0 * 48000) <= 2 * AAC_FRAME_SAMPLES
    assert dominant_frequency(samples[4800:-4800]) == pytest.approx(1000, abs=5)


def test_bitrate_setting_is_honoured() -> None:
    pcm = tone(440, 4.0) + tone(3000, 4.0, amplitude=0.2)
    _, low = encode_all(pcm)
    high_enc = AacEncoder(sample_rate_hz=48000, bitrate_bps=128000)
    high = [*high_enc.encode(pcm), *high_enc.flush()]
    assert sum(len(p.data) for p in high) > 1.5 * sum(len(p.data) for p in low)


def test_rejects_wrong_sample_format_and_use_after_flush() -> None:
    encoder = AacEncoder(sample_rate_hz=48000, bitrate_bps=64000)
    with pytest.raises(ValueError, match="int16"):
        encoder.encode(np.zeros(960, dtype=np.float32))
    encoder.flush()
    with pytest.raises(RuntimeError, match="closed"):
        encoder.encode(np.zeros(960, dtype=np.int16))
