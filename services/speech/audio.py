"""Audio in and out: WAV or raw 16-bit PCM to 16 kHz mono samples, checked and bounded; samples to WAV.

Everything a caller sends is untrusted: the header is read with the standard `wave` module, every
field is checked before a sample is touched, and a clip longer than MAX_SECONDS is refused from its
header alone, before it is decoded. Errors are AudioError, whose message names what is wrong; the
voice service answers them as EINVAL and the gateway as 400.
"""

from __future__ import annotations

import io
import wave

import numpy as np

RATE = 16_000                     # what the acoustic model was trained on
MAX_SECONDS = 60.0                # longest clip transcribed: a spoken question, not a meeting
MAX_AUDIO_BYTES = 16 << 20        # 16 MiB: 60 s of 48 kHz stereo 16-bit WAV is 11 MiB
MIN_RATE, MAX_RATE = 8_000, 192_000
MAX_CHANNELS = 8
_TAPS = 63                        # low-pass filter length before downsampling (odd: symmetric, no delay)


class AudioError(ValueError):
    """Audio that cannot be used; the message says what is wrong with it."""


def decode(data: bytes, sample_rate: int | None = None) -> np.ndarray:
    """16 kHz mono int16 samples from WAV bytes (any rate, any channel count, 16-bit PCM), or from raw
    little-endian 16-bit mono PCM when `sample_rate` is given."""
    if not data:
        raise AudioError("empty audio: no bytes were sent")
    if len(data) > MAX_AUDIO_BYTES:
        raise AudioError(f"audio is {len(data)} bytes, over the limit of {MAX_AUDIO_BYTES} ({MAX_AUDIO_BYTES >> 20} MiB)")
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        samples, rate, channels = _read_wav(data)
    elif sample_rate is None:
        raise AudioError("not a WAV file (no RIFF/WAVE header); raw 16-bit PCM needs its sample_rate")
    else:
        _check_rate(sample_rate)
        if len(data) % 2:
            raise AudioError("raw PCM must be 16-bit samples: an even number of bytes")
        samples, rate, channels = np.frombuffer(data, dtype="<i2"), sample_rate, 1
        _check_length(len(samples), rate)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    out = resample(samples.astype(np.float32), rate, RATE)
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def _read_wav(data: bytes) -> tuple[np.ndarray, int, int]:
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            width, rate, channels, frames = w.getsampwidth(), w.getframerate(), w.getnchannels(), w.getnframes()
            if width != 2:
                raise AudioError(f"WAV samples are {8 * width}-bit: only 16-bit PCM is read")
            if not 1 <= channels <= MAX_CHANNELS:
                raise AudioError(f"WAV has {channels} channels: 1 to {MAX_CHANNELS} are read")
            _check_rate(rate)
            _check_length(frames, rate)
            raw = w.readframes(frames)
    except (wave.Error, EOFError) as exc:
        raise AudioError(f"not a readable WAV file: {exc} (only uncompressed 16-bit PCM is read)") from None
    usable = len(raw) - len(raw) % (2 * channels)      # a truncated file: the whole frames it holds
    samples = np.frombuffer(raw[:usable], dtype="<i2")
    if samples.size == 0:
        raise AudioError("empty audio: the WAV file holds no samples")
    return samples, rate, channels


def _check_rate(rate: int) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"sample rate {rate} Hz: {MIN_RATE} to {MAX_RATE} Hz are read")


def _check_length(frames: int, rate: int) -> None:
    if frames == 0:
        raise AudioError("empty audio: it holds no samples")
    if frames / rate > MAX_SECONDS:
        raise AudioError(f"audio is {frames / rate:.1f} s long, over the limit of {MAX_SECONDS:.0f} s")


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """x at rate src, at rate dst: low-pass (windowed sinc) under the lower Nyquist frequency, then linear
    interpolation. Plenty for speech recognition, and numpy only."""
    if src == dst:
        return x
    if dst < src and x.size > _TAPS:
        cutoff = 0.5 * dst / src * 0.9                  # cycles per input sample, a little under Nyquist
        n = np.arange(_TAPS) - _TAPS // 2
        taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(_TAPS)
        x = np.convolve(x, taps / taps.sum(), mode="same")
    count = max(1, int(round(x.size * dst / src)))
    return np.interp(np.arange(count) * (src / dst), np.arange(x.size), x).astype(np.float32)


def encode_wav(samples: np.ndarray, rate: int) -> bytes:
    """Mono int16 samples as a WAV file."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return buf.getvalue()
