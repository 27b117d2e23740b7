"""The voice service's parts in-process: audio checks, spelling numbers, the kb's language model,
pronunciations from eSpeak, and the recognizer cache (rebuilt per kb version, bounded)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from llmos.services.speech import audio, lm, text
from voice_audio import KB_DOC, needs_engines, wav_bytes


def test_a_wav_of_any_rate_and_channels_becomes_16k_mono():
    tone = (8000 * np.sin(np.arange(44100) * 2 * np.pi * 440 / 44100)).astype(np.int16)
    out = audio.decode(wav_bytes(tone, 44100, channels=2))
    assert out.dtype == np.int16 and abs(len(out) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(out.astype(float)))
    assert abs(np.argmax(spectrum) * 16000 / len(out) - 440) < 5       # the same tone, resampled


@pytest.mark.parametrize("data, rate, words", [
    (b"", None, "empty"), (b"RIFF0000WAVEjunk", None, "not a readable WAV"),
    (b"raw", None, "not a WAV"), (b"\0" * 10, 4000, "sample rate"),
    (wav_bytes([0] * 10, 16000, channels=1, width=1), None, "8-bit"),
    (b"\0" * (audio.MAX_AUDIO_BYTES + 2), 16000, "over the limit"),
], ids=["empty", "bad-header", "raw-without-rate", "low-rate", "8-bit", "oversize"])
def test_bad_audio_names_what_is_wrong(data, rate, words):
    with pytest.raises(audio.AudioError, match=words):
        audio.decode(data, rate)


def test_numbers_and_symbols_are_spelled_as_spoken():
    assert text.words("Returns take 30 days; express costs £7.95 (10% off) for 1,500 items") == (
        "returns take thirty days express costs seven point nine five pounds ten percent off for "
        "one thousand five hundred items").split()
    assert text.number_words(2_000_017) == "two million seventeen"


def test_the_kb_model_is_a_proper_backoff_model():
    model = lm.build([KB_DOC])
    section = model.arpa.split("\\2-grams:")[0]
    unigrams = {m.group(2): float(m.group(1)) for m in re.finditer(r"^(-?\d+\.\d+) (\S+)", section, re.M)}
    assert abs(sum(10 ** p for w, p in unigrams.items() if w != "<s>") - 1) < 1e-3
    assert {"zentrixo", "thermostat", "eighteen", "how", "long"} <= set(model.vocab)
    assert re.search(r"^-?\d+\.\d+ batteries last", model.arpa, re.M)       # a kb phrase in a question shape


def test_the_kb_model_is_bounded():
    many = " ".join(f"word{i} is here." for i in range(3 * lm.MAX_VOCAB // 2))
    assert len(lm.build([many]).vocab) <= lm.MAX_VOCAB + len({w for t in lm.QUESTION_TEMPLATES for w in t.split()}) + 10


@needs_engines
def test_made_up_words_get_cmu_phones_from_espeak():
    from llmos.services.speech.lexicon import LEXICON, ipa_to_arpabet
    assert ipa_to_arpabet("zɛntɹˈɪksoʊ") == "Z EH N T R IH K S OW"
    phones, from_dictionary = LEXICON.pronounce("zentrixo")
    assert not from_dictionary and phones == ["Z EH N T R IH K S OW"]
    assert LEXICON.pronounce("delivery") == (["D IH L IH V ER IY"], True)


@needs_engines
def test_a_kb_recognizer_is_built_once_per_version_and_the_cache_is_bounded():
    from llmos.services.speech.backends import Recognizers, content_hash
    cache = Recognizers(max_cached=2)
    v1 = ("alice", "help", content_hash([("a#0", KB_DOC)]))
    first = cache.for_kb(v1, [KB_DOC])
    assert cache.for_kb(v1, [KB_DOC]) is first and cache.builds == 1
    v2 = ("alice", "help", content_hash([("a#0", KB_DOC + " New words.")]))
    assert cache.for_kb(v2, [KB_DOC + " New words."]) is not first and cache.cached(v1) is None   # replaced
    for name in ("b", "c"):
        cache.for_kb(("alice", name, "h"), ["Other text."])
    assert cache.cached(v2) is None and cache.builds == 4 and len(cache._kbs) == 2


def test_the_content_hash_ignores_order_and_sees_every_change():
    from llmos.services.speech.backends import content_hash
    a = [("x#0", "one"), ("y#0", "two")]
    assert content_hash(a) == content_hash(a[::-1]) != content_hash([("x#0", "one"), ("y#0", "two!")])


@needs_engines
def test_a_recognizer_stopped_mid_clip_hears_the_next_one():
    from llmos.services.speech.backends import build_recognizer
    from voice_audio import spoken
    rec = build_recognizer([KB_DOC])
    samples, rate = spoken("How long do the batteries last?")
    pcm = audio.decode(wav_bytes(samples, rate))
    calls = []

    def over_budget():
        calls.append(1)
        if len(calls) > 3:
            raise TimeoutError("over budget")

    with pytest.raises(TimeoutError):
        rec.transcribe(pcm, over_budget)
    assert "batteries" in rec.transcribe(pcm).text


@needs_engines
def test_each_caller_gets_a_general_recognizer_of_its_own():
    """A decoder hears one clip at a time: bob's short clip does not wait behind alice's minute."""
    from llmos.services.speech.backends import Recognizers
    cache = Recognizers(max_cached=4)
    alice = cache.general("alice")
    assert cache.general("alice") is alice and cache.general("bob") is not alice and cache.builds == 2
    cache.for_kb(("carol", "help", "h"), ["Some text."])
    cache.general("carol")                        # a third general one: the oldest (alice's) goes, carol's kb stays
    assert cache.cached(("alice", None, "general")) is None and cache.cached(("carol", "help", "h")) is not None
