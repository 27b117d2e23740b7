"""Picking the sentence that answers a question from retrieved passages: kb's extractive QA.

Passages are re-ranked by embedding score plus word overlap (a hybrid ranking); their sentences
are candidates, each scored by meaning (similarity to the question), its passage's rank, the
words it shares with the question, and whether it holds the kind of answer asked for.
"""

from __future__ import annotations

import re

import numpy as np

from llmos.services import nlp

SHORT_ANSWER_WORDS = 8     # a sentence this short joins its neighbour in the quote ("No. Do this instead.")


def candidate_sentences(passages: list[dict]) -> list[tuple[int, str, str]]:
    """(passage index, sentence, sentence plus the next one if it is short) for the passages' sentences."""
    out = []
    for i, p in enumerate(passages):
        body = p["text"].split("\n", 1)[1] if "\n" in p["text"] and not _is_body(p["text"]) else p["text"]
        spans = nlp.sentences(body)
        for j, s in enumerate(spans):
            if len(nlp.words(s.text)) < 3:
                continue
            start, end = s.start, s.end
            previous = spans[j - 1] if j > 0 else None
            if previous and len(nlp.words(previous.text)) < SHORT_ANSWER_WORDS and "\n\n" not in body[previous.end:start]:
                start = spans[j - 1].start
            if len(nlp.words(s.text)) < SHORT_ANSWER_WORDS and j + 1 < len(spans):
                end = spans[j + 1].end
            out.append((i, s.text, body[start:end]))
    return out


def _is_body(text: str) -> bool:
    """True when the first line is text rather than a heading (a chunk of a document without headings)."""
    first = text.split("\n", 1)[0]
    return first.rstrip().endswith((".", "!", "?", ":")) or len(first) > 120


# What kind of answer a question wants, and how to see it in a sentence: a cheap answer-type
# check (as classic extractive QA systems do) that keeps "How much...?" from being answered
# with the right topic but no price in it.
_ANSWER_TYPES = [
    (re.compile(r"\bhow much\b|\bcost|\bprice|\bfee\b|\bcharge", re.I),
     re.compile(r"[£$€]\s?\d|\d\s?%|\bfree\b|\bpercent\b", re.I)),
    (re.compile(r"\bhow (?:long|quickly|soon)\b|\bhow many (?:days|weeks|hours|minutes|months|years)\b", re.I),
     re.compile(r"\d+(?:\s*(?:-|to)\s*\d+)?[\s-]*(?:working\s+)?(?:minutes?|hours?|days?|weeks?|months?|years?)\b", re.I)),
    (re.compile(r"\bwhat time\b|\bhours\b|\bwhen (?:do|does|are|is)\b.*\bopen", re.I),
     re.compile(r"\d{1,2}(?::\d{2})?\s?(?:am|pm)\b", re.I)),
    (re.compile(r"\bnumber\b|\bhow many\b", re.I), re.compile(r"\d")),
    (re.compile(r"^\s*who\b|\bwhich (?:company|partner|firm|store|person|team)\b", re.I),
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


async def score_sentences(kernel, question: str, pool: list[dict], candidates: list[tuple[int, str, str]],
                          focus: str | None = None) -> np.ndarray:
    """How well each candidate sentence answers: meaning, its passage's rank, shared words, answer type.

    focus: the part of the question that is new (a follow-up's own words); its words count again.
    """
    vectors = await nlp.embed(kernel, [question] + [s for _, s, _ in candidates])
    sims = vectors[1:] @ vectors[0]
    return np.array([sims[j] + 0.5 * pool[i]["rank_score"] + 0.3 * nlp.overlap(question, s)
                     + (0.3 * nlp.overlap(focus, s) if focus else 0.0)
                     + answer_type_bonus(question, s) for j, (i, s, _) in enumerate(candidates)])
