"""The two interfaces the voice service uses, and the engines behind them; swap an engine here.

A Recognizer turns 16 kHz mono int16 samples into a Transcript; a Synthesizer turns text into
samples. Recognizers for knowledge bases are built from the kb's text (lm.py) and kept in a
bounded cache keyed by the kb's owner, name and content hash: built once per version of a kb,
rebuilt when its text changes, the least recently used dropped past MAX_CACHED.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Callable, Protocol

import numpy as np

from . import lm
from .espeak import ESPEAK
from .sphinx import SphinxRecognizer, Transcript, can_say, general_words

MAX_CACHED = 8              # recognizers kept (a kb's: a few MB and tens of ms to build)
MAX_GENERAL = 2             # of them, the general model's (92 MB and 0.5 s each: its 130,000-word model and dictionary).
                            # One evicted while a caller uses it serves that caller to the end of its clip.


class Recognizer(Protocol):
    def transcribe(self, samples: np.ndarray, checkpoint: Callable[[], None] | None = None) -> Transcript: ...


class Synthesizer(Protocol):
    def synthesize(self, text: str, voice: str, rate: int) -> tuple[np.ndarray, int]: ...


def synthesizer() -> Synthesizer:
    return ESPEAK


def build_recognizer(texts: list[str] | None, general_weight: float = lm.GENERAL_WEIGHT) -> Recognizer:
    """The general recognizer (texts=None), or one whose language model is these texts'."""
    if texts is None:
        return SphinxRecognizer()
    general = general_words() if general_weight > 0 else None
    return SphinxRecognizer(lm.build(texts, general, general_weight, can_say))


def content_hash(items: list[tuple[str, str]]) -> str:
    """The version of a kb: a hash of its (key, text) entries in key order."""
    h = hashlib.sha256()
    for key, value in sorted(items):
        h.update(key.encode() + b"\0" + value.encode() + b"\0")
    return h.hexdigest()


class Recognizers:
    """Recognizers by (owner, kb, version), the general model's as (owner, None, "general"): a bounded LRU,
    safe to use from worker threads."""

    def __init__(self, max_cached: int = MAX_CACHED):
        self.max_cached = max_cached
        self._lock = threading.Lock()
        self._kbs: OrderedDict[tuple, Recognizer] = OrderedDict()
        self.builds = 0              # recognizers built: the cache's misses

    def general(self, owner: str) -> Recognizer:
        """The general model's recognizer of one caller: a decoder serves one clip at a time, so the last
        MAX_GENERAL callers do not queue behind each other's long clips."""
        return self.for_kb((owner, None, "general"), None)

    def cached(self, key: tuple) -> Recognizer | None:
        with self._lock:
            found = self._kbs.get(key)
            if found is not None:
                self._kbs.move_to_end(key)
            return found

    def for_kb(self, key: tuple, texts: list[str] | None) -> Recognizer:
        """The recognizer for a kb version; key = (owner, kb name, content hash). Other versions of the
        same kb are dropped when a new one is built: they will not be asked for again."""
        found = self.cached(key)
        if found is not None:
            return found
        built = build_recognizer(texts)
        with self._lock:
            self.builds += 1
            for stale in [k for k in self._kbs if k[:2] == key[:2] and k != key]:
                del self._kbs[stale]
            self._kbs[key] = built
            general = [k for k in self._kbs if k[1] is None]
            for oldest in general[:max(0, len(general) - MAX_GENERAL)]:
                del self._kbs[oldest]
            while len(self._kbs) > self.max_cached:
                self._kbs.popitem(last=False)
        return built


RECOGNIZERS = Recognizers()
