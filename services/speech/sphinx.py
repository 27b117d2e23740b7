"""Speech recognition with PocketSphinx: its general model, or a knowledge base's own (lm.py).

A Decoder is built from files, so a kb's model and dictionary are written to a private temporary
folder, read, and the folder removed. Each clip is heard on its own: the cepstral mean (which
PocketSphinx otherwise carries from one utterance to the next, so one caller's audio would shape
how the next caller is heard) is reset and estimated from the clip itself first. A Decoder is not thread-safe: each has a lock, and audio is
fed in short blocks so the thread lets go of the GIL (and can stop, workers.checkpoint) between them.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from dataclasses import dataclass

import numpy as np

from .audio import RATE
from .lexicon import LEXICON
from .lm import LanguageModel

BLOCK_SAMPLES = RATE // 4          # a quarter of a second per process_raw call
CMN_PASSES = 2                     # passes over a clip's features for its cepstral mean before the search:
                                   # WER 0.50 starting from the model's mean, 0.32 after one pass, 0.23 after
                                   # two, 0.24 after three (benchmarks/voice.py, kb model)
PAD_SAMPLES = RATE // 2            # silence around a clip: synthetic speech starts at once, and the
                                   # recognizer hears the first word better after a little silence (measured)
FRAMES_PER_SECOND = 100
GENERAL_WORDS = 5_000              # the general model's most frequent words mixed into a kb's model
_ALTERNATE = re.compile(r"\(\d+\)$")


@dataclass
class Transcript:
    text: str
    words: list[dict]               # [{word, start, end}] in seconds
    confidence: float               # 0..1: the hypothesis' posterior probability, as PocketSphinx puts it


class SphinxRecognizer:
    """One PocketSphinx decoder: the general model (lm=None) or the given one with its dictionary."""

    def __init__(self, lm: LanguageModel | None = None, checkpoint=lambda: None, **options):
        import pocketsphinx
        self._checkpoint = checkpoint
        self._lock = threading.Lock()
        settings = {"loglevel": "FATAL", "samprate": RATE, **options}
        if lm is None:
            self._decoder = pocketsphinx.Decoder(**settings)
            self._cmn_init = self._decoder.get_cmn()
            self.words = None
            return
        with tempfile.TemporaryDirectory(prefix="llmos-voice-") as tmp:
            lm_path, dict_path = os.path.join(tmp, "kb.lm"), os.path.join(tmp, "kb.dict")
            with open(lm_path, "w", encoding="utf-8") as f:
                f.write(lm.arpa)
            with open(dict_path, "w", encoding="utf-8") as f:
                f.write(dictionary(lm.vocab))
            self._decoder = pocketsphinx.Decoder(lm=lm_path, dict=dict_path, **settings)
        self._cmn_init = self._decoder.get_cmn()
        self.words = len(lm.vocab)

    def transcribe(self, samples: np.ndarray, checkpoint=None) -> Transcript:
        """Words with their times (from the best path) and a confidence; samples are 16 kHz mono int16."""
        stop = checkpoint or self._checkpoint
        with self._lock:
            d = self._decoder
            d.set_cmn(self._cmn_init)          # each clip alone: nothing of the last caller's audio carries over
            pad = np.zeros(PAD_SAMPLES, np.int16)
            samples = np.concatenate([pad, samples, pad])
            for _ in range(CMN_PASSES):        # the clip's own cepstral mean, from its features alone
                # searched block by block, like the last pass: a pass without search leaves its frames
                # for end_utt to search all at once, one C call that held the GIL (and the host's loop)
                # 8 s for 20 s of noise
                _utterance(d, samples, stop, search=True)
                d.set_cmn(d.get_cmn(True))
            _utterance(d, samples, stop, search=True)
            hyp = d.hyp()
            words = []
            for seg in d.seg() if hyp is not None else ():
                word = _ALTERNATE.sub("", seg.word)
                if word.startswith(("<", "[")):        # <s>, </s>, <sil>, [NOISE]: not words
                    continue
                start = max(0.0, seg.start_frame / FRAMES_PER_SECOND - PAD_SAMPLES / RATE)
                words.append({"word": word, "start": round(start, 2),
                              "end": round(max(start, (seg.end_frame + 1) / FRAMES_PER_SECOND - PAD_SAMPLES / RATE), 2)})
            confidence = min(1.0, max(0.0, float(hyp.prob))) if hyp is not None and words else 0.0
        return Transcript(" ".join(w["word"] for w in words), words, round(confidence, 3))


def _utterance(d, samples: np.ndarray, stop, search: bool) -> None:
    """One pass over the clip, in blocks; the utterance is ended however it stops (a call over its budget
    raises from stop()), so the decoder is ready for the next clip."""
    d.start_utt()
    try:
        for i in range(0, len(samples), BLOCK_SAMPLES):
            stop()
            d.process_raw(samples[i:i + BLOCK_SAMPLES].tobytes(), no_search=not search, full_utt=False)
    finally:
        d.end_utt()


def dictionary(vocab: list[str]) -> str:
    """The pronunciation dictionary of a vocabulary, in PocketSphinx's format (`word(2)` for a second one)."""
    lines = []
    for word in vocab:
        for i, phones in enumerate(LEXICON.pronounce(word)[0]):
            lines.append(f"{word}{'' if i == 0 else f'({i + 1})'} {phones}")
    return "\n".join(lines) + "\n"


def can_say(word: str) -> bool:
    """Whether the word has a pronunciation (from the dictionary, or eSpeak's reading of it)."""
    return bool(LEXICON.pronounce(word)[0])


_GENERAL: dict[str, float] | None = None
_GENERAL_LOCK = threading.Lock()


def general_words() -> dict[str, float]:
    """The general model's GENERAL_WORDS most probable words with their unigram probabilities (read once)."""
    global _GENERAL
    with _GENERAL_LOCK:
        if _GENERAL is None:
            import pocketsphinx
            config = pocketsphinx.Config(loglevel="FATAL")
            logmath = pocketsphinx.LogMath()
            model = pocketsphinx.NGramModel(config, logmath, config["lm"])
            scored = sorted(((model.prob([w]), w) for w in LEXICON.words() if w.isalpha() or "'" in w), reverse=True)
            _GENERAL = {w: logmath.exp(p) for p, w in scored[:GENERAL_WORDS]}
        return _GENERAL

