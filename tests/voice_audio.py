"""Helpers for the voice tests: speech made with eSpeak NG, WAV files of any shape, the skip when the
engines are missing."""

from __future__ import annotations

import importlib.util
import io
import wave

import numpy as np
import pytest

needs_engines = pytest.mark.skipif(
    importlib.util.find_spec("pocketsphinx") is None or importlib.util.find_spec("espeakng_loader") is None,
    reason="voice needs the pocketsphinx and espeakng-loader wheels (pip install llmos)")

KB_DOC = ("# The Zentrixo thermostat\n\nThe Zentrixo thermostat runs on two batteries. The batteries last about "
          "eighteen months. To reset the thermostat, hold the dial for twenty seconds.\n\n# Returns\n\n"
          "You can return any item within thirty days for a full refund.")
QUESTION = "How long do the batteries last?"


def spoken(text: str, voice: str = "en-us", rate: int = 160) -> tuple[np.ndarray, int]:
    from llmos.services.speech.espeak import ESPEAK
    return ESPEAK.synthesize(text, voice, rate)


def wav_bytes(samples: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        if width == 1:
            w.writeframes((np.asarray(samples) // 256 + 128).astype(np.uint8).tobytes())
        else:
            w.writeframes(np.repeat(np.asarray(samples, dtype="<i2"), channels).tobytes())
    return buf.getvalue()


def spoken_wav(text: str, **kw) -> bytes:
    return wav_bytes(*spoken(text, **kw))


def resampled(samples: np.ndarray, src: int, dst: int) -> np.ndarray:
    from llmos.services.speech.audio import resample
    return np.rint(resample(samples.astype(np.float32), src, dst)).astype(np.int16)
