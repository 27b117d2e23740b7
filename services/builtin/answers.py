"""Picking the sentence that answers a question from retrieved passages: kb's extractive QA.

Passages are re-ranked by embedding score plus word overlap (a hybrid ranking); their sentences
are candidates, each scored by meaning (similarity to the question), its passage's rank, the
words it shares with the question, and whether it holds the kind of answer asked for (a price
for "how much", a duration for "how long"...).

A sentence is read with the one before it when it cannot stand alone: "It costs £7.95." says
what costs £7.95 only with "Express delivery arrives the next day." before it, and an FAQ's
answer ("A: No, ...") only with its question. Questions in the documents are never answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from llmos.services import nlp

SHORT_ANSWER_WORDS = 8     # a sentence this short joins its neighbour in the quote ("No. Do this instead.")
MAX_CANDIDATES = 256       # sentences scored per question: a pool of 4 passages of ~700 characters holds ~40
# A sentence that opens like this points back at the one before it for what it is about.
_LEANS_BACK = re.compile(r"^\s*(?:A:\s*)?(?:it|this|that|these|those|they|them|its|their|he|she|there|"
                         r"yes|no|also|otherwise|instead|however|then)\b", re.I)


@dataclass
class Candidate:
    passage: int        # index of its passage in the pool
    sentence: str       # the sentence itself
    quote: str          # what the answer shows: the sentence, with a short neighbour
    read_as: str        # what is scored: the sentence with the one it leans on
    heading: str        # its section's heading path ("Payments > Paying in instalments"), words that count too


def _is_question(text: str) -> bool:
    return text.rstrip(" *_").endswith("?")


def candidate_sentences(passages: list[dict]) -> list[Candidate]:
    """The answer candidates among the passages' sentences (questions and fragments are not), the first
    MAX_CANDIDATES of them: a passage is the caller's own memory value, which may be far longer than a chunk."""
    out = []
    for i, p in enumerate(passages):
        heading, body = "", p["text"]
        if "\n" in p["text"] and not _is_body(p["text"]):
            heading, body = p["text"].split("\n", 1)
        spans = nlp.sentences(body)
        for j, s in enumerate(spans):
            if len(nlp.words(s.text)) < 3 or _is_question(s.text):
                continue
            start, end = s.start, s.end
            previous = spans[j - 1] if j > 0 else None
            joined = previous is not None and "\n\n" not in body[previous.end:start]
            if joined and len(nlp.words(previous.text)) < SHORT_ANSWER_WORDS and not _is_question(previous.text):
                start = previous.start
            if len(nlp.words(s.text)) < SHORT_ANSWER_WORDS and j + 1 < len(spans) and not _is_question(spans[j + 1].text):
                end = spans[j + 1].end
            if joined and _LEANS_BACK.match(s.text) and not _is_question(previous.text):
                start = previous.start           # quoted too: "It costs £7.95." alone answers nothing
            read_as = body[start:end]
            if joined and _is_question(previous.text):
                read_as = f"{previous.text} {read_as}"
            out.append(Candidate(i, s.text, body[start:end], read_as, heading))
            if len(out) == MAX_CANDIDATES:
                return out
    return out


def _is_body(text: str) -> bool:
    """True when the first line is text rather than a heading (a chunk of a document without headings)."""
    first = text.split("\n", 1)[0]
    return first.rstrip().endswith((".", "!", "?", ":")) or len(first) > 120


# What kind of answer a question wants, and how to see it in a sentence: a cheap answer-type
# check (as classic extractive QA systems do) that keeps "How much...?" from being answered
# with the right topic but no price in it. The first kind the question asks for decides.
_MONEY = r"[£$€]\s?\d|\d\s?(?:%|percent\b|dollars?\b|pounds?\b|euros?\b)|\bfree\b|\bno charge\b|\bat no cost\b"
_DURATION = (r"(?<!\d)\d+(?:\s*(?:-|to)\s*\d+)?[\s-]*(?:business\s+|working\s+)?"     # (?<!\d): linear on digits
             r"(?:minutes?|hours?|days?|weeks?|months?|years?)\b|\blifetime\b|\bnext (?:business |working )?day\b|"
             r"\bsame day\b")
_CLOCK = r"\d{1,2}(?::\d{2})?\s?(?:[ap]\.?m\b\.?)|\bnoon\b|\bmidnight\b"
_ANSWER_TYPES = [
    (re.compile(r"\bhow much\b|\bcost|\bprice|\bfees?\b|\bcharge|\bpay for\b|\bdiscount\b", re.I), re.compile(_MONEY, re.I)),
    (re.compile(r"\bhow (?:long|quickly|soon)\b|\bhow many (?:days|weeks|hours|minutes|months|years)\b", re.I),
     re.compile(_DURATION, re.I)),
    (re.compile(r"\bwhat time\b|\bhours\b|^(?>.*?\bwhen\b).*\bopen", re.I | re.M),
     re.compile(_CLOCK, re.I)),
    (re.compile(r"\bhow (?:far|fast)\b", re.I), re.compile(r"\d\s*(?:miles?|mi|km|kilomet\w*|mph|km/h)\b", re.I)),
    (re.compile(r"\be-?mail address\b|\bwhat(?:'s| is) the e-?mail\b", re.I), re.compile(r"@")),
    (re.compile(r"\bnumber\b|\bhow many\b", re.I), re.compile(r"\d")),
    (re.compile(r"^\s*who\b|\bwhich (?:company|partner|firm|store|shop|person|team)\b", re.I),
     re.compile(r"(?<=[a-z,] )[A-Z][A-Za-z]+")),
]
TYPE_BONUS = 0.25          # a sentence without the kind of answer asked for cannot be the answer


def answer_type_bonus(question: str, sentence: str) -> float:
    for asks, shows in _ANSWER_TYPES:
        if asks.search(question):
            return TYPE_BONUS if shows.search(sentence) else 0.0
    return 0.0


def rerank(question: str, passages: list[dict]) -> list[dict]:
    """Passages by embedding score plus word overlap with the question (headings count): a hybrid ranking."""
    for p in passages:
        p["rank_score"] = p["score"] + 0.2 * nlp.overlap(question, p["text"])
    return sorted(passages, key=lambda p: -p["rank_score"])


async def _here(fn, *args):
    return fn(*args)


async def score_sentences(kernel, principal: str, question: str, pool: list[dict], candidates: list[Candidate],
                          focus: str | None = None, cpu=_here) -> np.ndarray:
    """How well each candidate answers: meaning, its passage's rank, shared words, answer type.

    Meaning is that of the sentence as read with what it leans on; shared words count its
    section's heading too ("Paying in instalments" over "...3 monthly payments with Klarna");
    the answer type must be in the quote itself. focus: the part of the question that is new (a
    follow-up's own words); its words count again. cpu: how to run the word counting (ctx.cpu).
    """
    asked = (await nlp.embed(kernel, [question]))[0]
    # a principal's document sentences come back question after question: cached under its name
    sims = await nlp.embed(kernel, [c.read_as for c in candidates], cache=principal) @ asked
    return sims + np.array(await cpu(_word_scores, question, pool, candidates, focus))


def _word_scores(question: str, pool: list[dict], candidates: list[Candidate], focus: str | None) -> list[float]:
    q, f = nlp.stems(question), nlp.stems(focus) if focus else set()      # once, not once per candidate

    def shared(words: set[str], text: str) -> float:
        return len(words & nlp.stems(text)) / len(words) if words else 0.0

    return [0.5 * pool[c.passage]["rank_score"] + 0.3 * shared(q, f"{c.heading} {c.read_as}")
            + 0.3 * shared(f, c.read_as) + answer_type_bonus(question, c.quote) for c in candidates]
