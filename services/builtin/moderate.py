"""moderate: flag text by category (hate, harassment, violence, self_harm, sexual, spam, pii), with a reason.

Two kinds of evidence, both explainable: patterns (phrases, and for pii the redact service's
checked detectors; for spam also link counts, shouting and money bait) and embedding
prototypes (a handful of example sentences per category; a text whose MiniLM similarity to
one passes the category's threshold is flagged, and the reason quotes the prototype). The
small generative model is not asked for a verdict: it would be neither calibrated nor stable.
"""

from __future__ import annotations

import re

import numpy as np

from llmos.services import Task, hookimpl
from llmos.services import nlp

from .redact import find_pii

CATEGORIES = ("hate", "harassment", "violence", "self_harm", "sexual", "spam", "pii")
THRESHOLD = 0.55       # cosine similarity to a category prototype that flags it (MiniLM)

PROTOTYPES = {
    "hate": [
        "People of that race are inferior and should be removed from this country.",
        "I hate all immigrants, they are vermin.",
        "Those religious people are subhuman and disgusting.",
        "Women are stupid and should not be allowed to vote.",
        "Gay people are a disease on society.",
    ],
    "harassment": [
        "You are a worthless idiot and everyone hates you.",
        "Shut up, you stupid moron.",
        "I know where you live and I will make your life miserable.",
        "You are ugly and pathetic, nobody wants you here.",
        "Go away loser, you are a complete failure.",
    ],
    "violence": [
        "I am going to kill you.",
        "I will beat him until he bleeds.",
        "Let's bomb the building tomorrow.",
        "I'm going to shoot everyone at the office.",
        "They deserve to be tortured and murdered.",
    ],
    "self_harm": [
        "I want to kill myself.",
        "I don't want to live anymore.",
        "I have been cutting myself again.",
        "I am planning to end my life tonight.",
        "Everyone would be better off if I were dead.",
    ],
    "sexual": [
        "Send me nude photos of yourself.",
        "I want to have sex with you tonight.",
        "Explicit pornographic content with graphic sexual acts.",
        "Describe your body in a sexual way for me.",
    ],
    "spam": [
        "Congratulations, you have won a free iPhone! Click here to claim your prize.",
        "Make $5000 a week working from home, limited offer, sign up now!",
        "Buy cheap pills online, no prescription needed.",
        "Earn money fast with this crypto investment, guaranteed returns.",
        "Act now! Exclusive deal, visit our website today.",
    ],
}

_PATTERNS = {
    "hate": [r"\b(?:subhuman|vermin|inferior race|ethnic cleansing|go back to your country)\b"],
    "harassment": [r"\b(?:idiot|moron|stupid|loser|worthless|pathetic|retard(?:ed)?|shut up|dumb ?ass)\b",
                   r"\bkill yourself\b|\bkys\b"],
    "violence": [r"\b(?:i(?:'ll| will| am going to|'m going to|'m gonna| wanna) (?:kill|murder|shoot|stab|hurt|beat|attack)"
                 r"(?! myself)\b)", r"\b(?:bomb|shoot up|massacre|behead)\b"],
    "self_harm": [r"\b(?:kill myself|end my life|suicid(?:e|al)|self[- ]harm|cutting myself|hurt myself|"
                  r"want to die|don'?t want to (?:live|be alive)|better off dead)\b"],
    "sexual": [r"\b(?:nude|nudes|porn\w*|sex(?:ual|ually)?|naked|xxx|nsfw|horny)\b"],
    "spam": [r"\b(?:click here|buy now|act now|limited (?:time )?offer|free (?:money|gift|iphone|prize)|"
             r"you(?:'ve| have) won|100% free|risk[- ]free|guaranteed (?:returns|income)|work from home|"
             r"no prescription|crypto(?:currency)? (?:investment|giveaway))\b"],
}
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.I)


def _pattern_hit(category: str, text: str) -> str | None:
    for pattern in _PATTERNS.get(category, []):
        m = re.search(pattern, text, re.I)
        if m:
            return m.group(0)
    return None


def _spam_signals(text: str) -> list[str]:
    signals = []
    urls = _URL.findall(text)
    if len(urls) >= 2:
        signals.append(f"{len(urls)} links")
    letters = [c for c in text if c.isalpha()]
    if len(letters) >= 20 and sum(c.isupper() for c in letters) / len(letters) > 0.6:
        signals.append("mostly capitals")
    if re.search(r"[!$€£]{3,}", text):
        signals.append("runs of !!! or $$$")
    return signals


def _first_sentences(text: str) -> list[str]:
    return [s.text for s in nlp.sentences(text)][:64] or [text]


def _evidence(text: str, wanted: list[str]) -> dict[str, tuple]:
    """Per category, what needs no model: (the phrase that matched, spam signals, kinds of personal data).
    Linear in the text; run on a worker thread (ctx.cpu)."""
    return {c: (_pattern_hit(c, text), _spam_signals(text) if c == "spam" else [],
                sorted({f.type for f in find_pii(text)}) if c == "pii" else []) for c in wanted}


async def moderate(ctx, text: str, categories: list | None = None, threshold: float = THRESHOLD) -> dict:
    wanted = [c for c in (categories or CATEGORIES) if c in CATEGORIES]
    result: dict[str, dict] = {}
    sims: dict[str, tuple[float, str]] = {}
    semantic = [c for c in wanted if c in PROTOTYPES]
    if semantic:
        flat = [(c, p) for c in semantic for p in PROTOTYPES[c]]
        vectors = await nlp.embed(ctx.kernel, [p for _, p in flat], cache=nlp.SHARED)
        pieces = await ctx.cpu(_first_sentences, text)
        query = await nlp.embed(ctx.kernel, pieces if len(pieces) > 1 else [text])
        scores = query @ vectors.T                      # sentence x prototype: a single bad sentence is enough
        best = scores.max(axis=0)
        for category in semantic:
            idx = [i for i, (c, _) in enumerate(flat) if c == category]
            j = idx[int(np.argmax(best[idx]))]
            sims[category] = (min(1.0, float(best[j])), flat[j][1])
    evidence = await ctx.cpu(_evidence, text, wanted)
    for category in wanted:
        reasons, score = [], 0.0
        hit, signals, kinds = evidence[category]
        if hit:
            reasons.append(f"matched the phrase '{hit}'")
            score = 1.0
        if category in sims:
            sim, proto = sims[category]
            score = max(score, sim)
            if sim > threshold:
                reasons.append(f"close in meaning ({sim:.2f}) to '{proto}'")
        if category == "spam":
            if len(signals) >= 2 or (signals and reasons):
                reasons.append("spam signals: " + ", ".join(signals))
                score = max(score, 0.9)
        if category == "pii":
            if kinds:
                reasons.append("contains personal data: " + ", ".join(k.lower() for k in kinds))
                score = 1.0
        result[category] = {"flagged": bool(reasons), "score": round(min(1.0, score), 4),
                            "reason": "; ".join(reasons) if reasons else None}
    flagged = [c for c, r in result.items() if r["flagged"]]
    return {"flagged": bool(flagged), "flagged_categories": flagged, "categories": result}


@hookimpl
def register_services(register):
    register("moderate", {
        "text": Task(moderate, "Flag the text per category (hate, harassment, violence, self_harm, sexual, spam, pii) "
                               "with a score and the reason (the phrase or the similar prototype that triggered it).",
                     args={"text": {"type": "str", "max_len": 1 << 20},
                           "categories": {"type": "list|null", "nullable": True,
                                          "max_items": len(CATEGORIES), "max_len": 32,
                                          "doc": f"only these (default all): {', '.join(CATEGORIES)}"},
                           "threshold": {"type": "float", "default": THRESHOLD, "min": 0.0, "max": 1.0,
                                         "doc": "embedding similarity to a prototype above which its category is flagged"}}),
    }, description="Content moderation by patterns and embedding prototypes, with reasons.")
