"""classify: zero-shot labels chosen by the caller, and a sentiment preset, with a confidence per label.

Asking SmolLM2-135M for one greedy word ("positive, negative or neutral?") scores below
chance on support messages (it answers "positive" to almost anything, or echoes the
question), and the kernel's infer gives no log-probabilities to score each label's
likelihood instead. So labels are scored by meaning: the text's MiniLM embedding against
prototypes of each label (the label itself, "This text is about <label>.", the caller's
description and examples; for sentiment, a dozen sentences per class written for it), and
for sentiment a lexicon with negation handling. Confidences are a softmax over the label scores.

The lexicon is on by default: MiniLM reads topic more than polarity, so "The delivery was late
and the box was crushed. Very disappointed." sat nearest to "It arrived early and in perfect
condition." (positive). Words and phrases of bad news ("late", "never arrived", "crushed") count
for negative even with no opinion word. On tests/data/sentiment.jsonl (the tuning set): greedy
one word from SmolLM2 53%, prototypes 90%, prototypes + this lexicon 95%; the held-out figures
are in benchmarks/README.md (benchmarks/services_eval.py).
"""

from __future__ import annotations

import re

import numpy as np

from llmos.services import ServiceError, Task, hookimpl
from llmos.services import nlp

MAX_LABELS = 64           # each label is embedded with its description and examples
MAX_PROTOTYPES = 1024     # labels, descriptions and examples of one call together (each is embedded)
TEMPERATURE = 0.04        # softmax temperature over cosine scores: 0.04 apart is e:1
LEXICON_WEIGHT = 0.06     # how far one lexicon hit moves a sentiment score, in cosine units (up to 3 hits)

SENTIMENT_PROTOTYPES = {
    "positive": [
        "Thank you, this is great.",
        "I am very happy with the service.",
        "Excellent, everything works perfectly now.",
        "The support team was fantastic and fixed it quickly.",
        "I love this product, highly recommended.",
        "Fast delivery and great quality, thanks a lot!",
        "That was really helpful, I appreciate it.",
        "Problem solved, you made my day.",
        "Very pleased with my purchase.",
        "Wonderful experience from start to finish.",
        "The staff were friendly and professional.",
        "It arrived early and in perfect condition.",
    ],
    "negative": [
        "This is terrible, I am very unhappy.",
        "The product is broken and I want a refund.",
        "I am angry, nobody has helped me.",
        "Awful service, I waited for hours.",
        "It still does not work and I am fed up.",
        "My order is late and no one answers.",
        "I was overcharged and this is unacceptable.",
        "Very poor quality, it broke immediately.",
        "I'm disappointed and frustrated with your company.",
        "The staff were rude and unhelpful.",
        "This is a waste of money.",
        "Nothing works, I keep getting errors.",
    ],
    "neutral": [
        "I would like to change my address.",
        "What time do you open?",
        "Can you tell me the price of this item?",
        "How do I reset my password?",
        "Please send me a copy of the invoice.",
        "I have a question about my order.",
        "Is this available in another colour?",
        "I want to update my payment details.",
        "Do you deliver to this area?",
        "My account number is 12345.",
        "I need information about the return policy.",
        "Could you check the status of my delivery?",
    ],
}

_POSITIVE = set("""
thank thanks thankful appreciate appreciated great excellent amazing awesome fantastic wonderful perfect perfectly
love loved lovely happy glad pleased delighted satisfied impressed helpful brilliant superb outstanding quick fast
friendly smooth smoothly easy recommend best good nice kudos enjoy enjoyed fixed solved resolved works generous neat
early
""".split())
# Opinion words, and events that are bad news whatever words tell them ("late", "crushed",
# "missing"): a complaint often names what happened and no feeling at all. Topic words (refund,
# complaint, problem, cancelled...) appear as often in thanks for a solved case as in complaints,
# so they are left to the embedding.
_NEGATIVE = set("""
broken broke terrible awful horrible worst bad poor useless rude angry furious annoyed annoying frustrated frustrating
disappointed disappointing unacceptable scam late wrong never nobody crash crashes crashing crashed fail failed fails
failure damaged defective error errors overcharged waste ridiculous joke hate stuck worse slow unhappy
delayed missing lost crushed dented scratched cracked torn ripped leaking leaked faulty refused denied ignored
""".split())
# Bad-news events told in several words; each counts once, and its words are not counted again.
_NEGATIVE_PHRASES = re.compile(r"\b(?:never (?:arrived|came|showed up|received)|(?:has|have|had|did)(?:n't| not) "
                               r"(?:arrived|come|turned up|been (?:sent|delivered|refunded))|still (?:waiting|not|no)\b|"
                               r"(?:does|do|did|is|are)(?:n't| not) work(?:ing)?|not working|stopped working|no one|"
                               r"on hold|hung up|fell apart|money back|charged (?:me )?twice|no (?:reply|response|answer|"
                               r"explanation)|without (?:any )?(?:reply|explanation|warning)|(?:can't|cannot|unable to) "
                               r"(?:log ?in|sign in|get through|reach))\b", re.I)
_NEGATORS = {"not", "no", "never", "don't", "doesn't", "didn't", "isn't", "wasn't", "aren't", "won't", "can't",
             "cannot", "hardly", "without"}
_WORD = re.compile(r"[a-z']+")


def lexicon_hits(text: str) -> tuple[int, int]:
    """(positive, negative) hits: bad-news phrases, then words; a negator within three words
    before a word flips it ("not happy", "never disappointed")."""
    neg = len(_NEGATIVE_PHRASES.findall(text))
    tokens = _WORD.findall(_NEGATIVE_PHRASES.sub(" . ", text.lower()))
    pos = 0
    for i, tok in enumerate(tokens):
        stem = tok.rstrip("s") if tok not in _POSITIVE | _NEGATIVE else tok
        polarity = 1 if stem in _POSITIVE or tok in _POSITIVE else -1 if stem in _NEGATIVE or tok in _NEGATIVE else 0
        if not polarity:
            continue
        if any(t in _NEGATORS for t in tokens[max(0, i - 3):i]):
            polarity = -polarity
        if polarity > 0:
            pos += 1
        else:
            neg += 1
    return pos, neg


async def prototype_scores(kernel, text: str, prototypes: dict[str, list[str]], top: int = 3,
                           scope: str = nlp.SHARED) -> dict[str, float]:
    """Per label: the mean of the text's `top` best cosine similarities to that label's prototypes
    (cached under `scope`: the caller's principal when the prototypes are the caller's words)."""
    flat = [(label, p) for label, ps in prototypes.items() for p in ps]
    vectors = await nlp.embed(kernel, [p for _, p in flat], cache=scope)
    query = (await nlp.embed(kernel, [text]))[0]
    return label_scores(flat, vectors @ query, top)


def label_scores(flat: list[tuple[str, str]], sims: np.ndarray, top: int) -> dict[str, float]:
    """Per label, the mean of its `top` best similarities: the prototypes grouped in one pass (a pass over
    all of them per label was quadratic in a caller's labels and examples)."""
    by_label: dict[str, list[int]] = {}
    for i, (label, _) in enumerate(flat):
        by_label.setdefault(label, []).append(i)
    return {label: float(np.sort(sims[idx])[::-1][:top].mean()) for label, idx in by_label.items()}


async def sentiment_scores(ctx, text: str, use_lexicon: bool = True) -> dict[str, float]:
    scores = await prototype_scores(ctx.kernel, text, SENTIMENT_PROTOTYPES)
    if use_lexicon:
        pos, neg = await ctx.cpu(lexicon_hits, text)
        scores["positive"] += LEXICON_WEIGHT * min(pos, 3)
        scores["negative"] += LEXICON_WEIGHT * min(neg, 3)
        if pos == neg == 0:
            scores["neutral"] += LEXICON_WEIGHT
    return scores


def _result(scores: dict[str, float], method: str) -> dict:
    labels = list(scores)
    conf = nlp.softmax(np.array([scores[label] for label in labels]), TEMPERATURE)
    ranked = sorted(zip(labels, conf, (scores[label] for label in labels)), key=lambda r: -r[1])
    return {"label": ranked[0][0], "confidence": round(float(ranked[0][1]), 4),
            "scores": {label: round(float(c), 4) for label, c, _ in ranked},
            "similarity": {label: round(float(s), 4) for label, _, s in ranked}, "method": method}


async def sentiment(ctx, text: str, lexicon: bool = True) -> dict:
    scores = await sentiment_scores(ctx, text, lexicon)
    return _result(scores, "prototypes+lexicon" if lexicon else "prototypes")


async def labels(ctx, text: str, labels: list, descriptions: dict | None = None, examples: dict | None = None) -> dict:
    if len(labels) < 2 or not all(isinstance(label, str) and label.strip() for label in labels):
        raise ServiceError("EINVAL", "classify.labels: 'labels' must be at least two non-empty strings")
    if len(set(labels)) != len(labels):
        raise ServiceError("EINVAL", "classify.labels: 'labels' must not repeat")
    descriptions = descriptions or {}
    examples = examples or {}
    for extra, what in ((descriptions, "descriptions"), (examples, "examples")):
        stray = set(extra) - set(labels)
        if stray:
            raise ServiceError("EINVAL", f"classify.labels: '{what}' names labels not in 'labels': "
                                         f"{', '.join(sorted(stray))}")
    prototypes = {}
    for label in labels:
        ps = [label, f"This text is about {label}."]
        if isinstance(descriptions.get(label), str):
            ps.append(descriptions[label])
        ps += [e for e in examples.get(label, []) if isinstance(e, str)]
        prototypes[label] = ps
    if sum(map(len, prototypes.values())) > MAX_PROTOTYPES:
        raise ServiceError("EINVAL", f"classify.labels: at most {MAX_PROTOTYPES} labels, descriptions and examples "
                                     f"in all (each is embedded); send fewer examples")
    scores = await prototype_scores(ctx.kernel, text, prototypes, top=1, scope=ctx.caller.get("principal", "?"))
    return _result(scores, "prototypes")


@hookimpl
def register_services(register):
    register("classify", {
        "labels": Task(labels, "Zero-shot: which of the caller's labels fits the text, with a confidence per label "
                               "(embedding similarity to each label, its description and examples).",
                       args={"text": {"type": "str", "max_len": 1 << 20},
                             "labels": {"type": "list", "max_items": MAX_LABELS, "max_len": 256,
                                        "doc": f"two to {MAX_LABELS} label names"},
                             "descriptions": {"type": "map|null", "nullable": True, "max_items": MAX_LABELS,
                                              "doc": "label -> a sentence describing it (improves accuracy)"},
                             "examples": {"type": "map|null", "nullable": True, "max_items": MAX_LABELS,
                                          "doc": "label -> example texts of that label"}}),
        "sentiment": Task(sentiment, "Positive, negative or neutral, with a confidence per label "
                                     "(similarity to a dozen prototype sentences per label, plus a lexicon).",
                          args={"text": {"type": "str", "max_len": 1 << 20},
                                "lexicon": {"type": "bool", "default": True,
                                            "doc": "add a lexicon's evidence (opinion words, bad-news events, "
                                                   "negation) to the embedding scores; false: embeddings only"}}),
    }, description="Label texts by meaning: caller-given labels (zero-shot) or sentiment.")
