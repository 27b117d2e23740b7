"""eSpeak NG through ctypes: speech from text, and phonemes for words no dictionary knows.

libespeak-ng and its data come from the `espeakng-loader` wheel. The library keeps global state
(one voice, one callback), so every use holds one lock; ctypes drops the GIL inside the C calls, so
other threads (and the service host's event loop) run meanwhile. Loaded on first use.
"""

from __future__ import annotations

import ctypes
import re
import threading
from pathlib import Path

import numpy as np

DEFAULT_VOICE = "en-us"
DEFAULT_RATE = 175                 # words per minute, eSpeak's own default
MIN_RATE, MAX_RATE = 80, 450       # eSpeak's usable range
MAX_TEXT_CHARS = 4096
_VOICE_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,32}(?:\+[A-Za-z0-9_\-]{1,16})?$")
_OUTPUT_RETRIEVAL, _CHARS_UTF8, _POS_CHARACTER, _RATE_PARAM = 1, 1, 1, 1
_IPA = 0x02                        # espeak_TextToPhonemes: IPA rather than eSpeak's ASCII names
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakError(ValueError):
    """A request eSpeak cannot serve (an unknown voice...); the message says what."""


class Espeak:
    """One process-wide eSpeak NG: synthesize(text) -> samples, phonemes(word) -> IPA."""

    def __init__(self):
        self._lock = threading.Lock()
        self._lib = None
        self._rate = 0
        self._known: tuple[set[str], set[str]] | None = None
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)      # kept alive as long as the library may call it

    @property
    def sample_rate(self) -> int:
        with self._lock:
            self._load()
            return self._rate

    def _load(self) -> None:
        if self._lib is not None:
            return
        import espeakng_loader          # lazily: only a host that speaks needs it
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        rate = lib.espeak_Initialize(_OUTPUT_RETRIEVAL, 0, espeakng_loader.get_data_path().encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to start (espeak_Initialize returned {rate})")
        lib.espeak_SetSynthCallback(self._callback)
        self._lib, self._rate = lib, rate

    def _collect(self, wav, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0                        # 0: go on

    def voices(self) -> tuple[set[str], set[str]]:
        """The voice names (languages: en, en-us, ...) and variants (f3, m3, ...) in eSpeak's data, lower-case."""
        import espeakng_loader
        data = Path(espeakng_loader.get_data_path())
        return ({p.name.lower() for p in (data / "lang").rglob("*") if p.is_file()},
                {p.name.lower() for p in (data / "voices" / "!v").glob("*") if p.is_file()})

    def _voice(self, voice: str) -> None:
        if self._known is None:
            self._known = self.voices()
        name, _, variant = voice.lower().partition("+")
        known = _VOICE_NAME.match(voice) and name in self._known[0] and (not variant or variant in self._known[1])
        if not known or self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"unknown voice '{voice[:40]}': name an eSpeak NG voice such as 'en-us', 'en' (British) "
                              f"or 'en-us+f3' (a variant after '+')")

    def synthesize(self, text: str, voice: str = DEFAULT_VOICE, rate: int = DEFAULT_RATE) -> tuple[np.ndarray, int]:
        """(int16 mono samples, sample rate) of the text spoken."""
        if not MIN_RATE <= rate <= MAX_RATE:
            raise EspeakError(f"rate {rate} words per minute: {MIN_RATE} to {MAX_RATE}")
        data = text[:MAX_TEXT_CHARS].encode("utf-8", "replace") + b"\0"
        with self._lock:
            self._load()
            self._voice(voice)
            self._lib.espeak_SetParameter(_RATE_PARAM, int(rate), 0)
            self._chunks = []
            self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return samples.astype(np.int16), self._rate

    def phonemes(self, word: str, voice: str = DEFAULT_VOICE) -> str:
        """The word's pronunciation in IPA as eSpeak reads it (its rules guess at any spelling)."""
        with self._lock:
            self._load()
            self._voice(voice)
            text = ctypes.c_char_p(word.encode("utf-8", "replace"))
            out = []
            while text.value:          # it returns one clause per call and moves the pointer on
                ipa = self._lib.espeak_TextToPhonemes(ctypes.byref(text), _CHARS_UTF8, _IPA)
                if ipa is None:
                    break
                out.append(ipa.decode("utf-8", "replace"))
        return " ".join(out)


ESPEAK = Espeak()
