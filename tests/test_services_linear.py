"""The built-in services' text algorithms take time linear in their input, on the inputs an attacker
would write: every regex and loop of summarize, classify, translate, redact, moderate and kb on
100 KB (or, where the legal input is larger and the cost only shows there, 4 MiB) of adversarial
text finishes in a bounded time.

Before these were fixed, one such call held the service host for minutes or hours: nlp.sentences
on "!!!..." or "Dr. Dr. ..." was quadratic (the abbreviation check re-read a growing piece), a
markdown heading followed by spaces was cubic, redact's sign-off pattern was quadratic in blank
lines, its overlap check and its "redact a found value everywhere" pass quadratic in findings.

Each case runs under an interval timer that interrupts it (the regex engine checks signals), so a
regression fails in seconds instead of hanging the suite.
"""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager

import numpy as np
import pytest

from llmos.services import nlp
from llmos.services.builtin import answers, classify, moderate, redact, translate

N = 100_000
LIMIT_S = 5.0      # each case takes under 0.5 s here (redact's phone matcher up to 2 s); the quadratic ones took minutes


class TooSlow(Exception):
    pass


@contextmanager
def within(seconds: float):
    def expire(signum, frame):
        raise TooSlow(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def timed(fn, *args, limit: float = LIMIT_S, **kwargs):
    started = time.perf_counter()
    with within(limit):
        result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


ADVERSARIAL = {
    "bangs": "!" * N,
    "dots": "." * N,
    "questions": "?." * (N // 2),
    "abbreviations": "Dr. " * (N // 4),
    "blank lines": "\n" * N,
    "signoff then blank lines": "Regards," + "\n" * N + "x",
    "spaced lines": ("\n" + " " * 1000 + "x") * (N // 1000),
    "percent local parts": "a%" * (N // 2),
    "dotted domain": "a@" + "a." * (N // 2),
    "digits": "1" * N,
    "spaced digits": "1 " * (N // 2),
    "plus numbers": "+1 " * (N // 3),
    "emails": " ".join(f"user{i}@host{i}.com" for i in range(N // 22)),
    "names": " ".join(f"John Smi{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}{chr(97 + i // 676 % 26)}"
                      for i in range(N // 12)),
    "cues": "my name is " * (N // 11),
    "greetings": "Hi, " * (N // 4),
    "titles": "Mr " * (N // 3),
    "capital then spaces": "Ab" + " " * N,
    "ibans": ("GB12" + " A" * 30 + " ") * (N // 66),
    "heading then spaces": "# a" + " " * N + "b",
    "heading of hashes": "# " + "#" * N,
    "list digits": " " * 10 + "1" * N + "x",
    "stars": "a*" * (N // 2),
    "table": ("|" + "a|" * 100 + "\n") * (N // 202),
    "nots": "not " * (N // 4),
    "whens": "when " * (N // 5),
    "words": "hello world. " * (N // 13),
}


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_sentence_splitting_is_linear(name):
    timed(nlp.sentences, ADVERSARIAL[name])


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_markdown_chunking_is_linear(name):
    timed(nlp.chunk_document, ADVERSARIAL[name], 100, 5)


def test_packing_one_huge_piece_is_linear():
    """kb.ingest takes 16 MiB: one paragraph with no sentence end, cut into 100-character chunks."""
    piece = "word " * ((4 << 20) // 5)
    chunks, _ = timed(nlp.pack, [piece], 100, 1)
    assert all(len(c) <= 100 for c in chunks) and sum(len(c) for c in chunks) >= len(piece.strip()) * 0.9
    timed(nlp.chunk_document, piece, 100, 1)


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_redaction_is_linear(name):
    timed(redact.redact_text, ADVERSARIAL[name])


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_moderation_patterns_are_linear(name):
    text = ADVERSARIAL[name]
    for category in moderate.CATEGORIES:
        timed(moderate._pattern_hit, category, text)
    timed(moderate._spam_signals, text)


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_sentiment_lexicon_and_language_detection_are_linear(name):
    timed(classify.lexicon_hits, ADVERSARIAL[name])
    timed(translate.detect, ADVERSARIAL[name])


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_answer_extraction_is_linear(name):
    """A kb passage is the caller's own memory value (up to 16 MiB through memwrite), a question up to
    16 KiB through support.chat: neither may make the host's answer-picking superlinear."""
    text = ADVERSARIAL[name]
    timed(answers.candidate_sentences, [{"text": text, "score": 0.5}])
    for question in ("how long does it take?", "how much is it?", "when do you open?", "who is it?",
                     "what is the number?", text[:16384]):
        timed(answers.answer_type_bonus, question, text)
    timed(answers.rerank, text[:16384], [{"text": text, "score": 0.5}])


def test_a_found_value_is_redacted_everywhere_in_linear_time():
    """4,000 distinct names, each found once after a cue and met again without one: all redacted."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    names = [f"Zo{letters[i % 26]}{letters[i // 26 % 26]} Quin{letters[i // 676 % 26]}{letters[i % 7]}" for i in range(4000)]
    text = " ".join(f"my name is {n}." for n in names) + " " + " ".join(f"then {n} left" for n in names)
    (redacted, findings), _ = timed(redact.redact_text, text, limit=10.0)
    assert "Quin" not in redacted and len(findings) == 2 * len(names)


def test_a_found_value_is_still_redacted_everywhere():
    text = "Call me on 020 7946 0958, Maria Garcia here. Again: 020 7946 0958. Maria said hi; ask Garcia."
    redacted, _ = redact.redact_text(text)
    assert redacted == ("Call me on [PHONE_1], [NAME_1] here. Again: [PHONE_1]. [NAME_2] said hi; ask Garcia.")


def test_label_scores_group_prototypes_in_one_pass():
    flat = [(f"l{i % 64}", f"p{i}") for i in range(200_000)]
    sims = np.random.default_rng(0).random(len(flat)).astype(np.float32)
    scores, _ = timed(classify.label_scores, flat, sims, 3)
    assert set(scores) == {f"l{i}" for i in range(64)}
