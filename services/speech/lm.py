"""A trigram language model of a knowledge base's own text, mixed with general English, as ARPA text.

PocketSphinx's general model spreads its bets over 130,000 words, and on synthetic speech of
support questions it gets most words wrong (WER 0.88 on our set). What users say to a kb is
mostly the kb's own words, in question shapes: so the model is trained on the kb's sentences (and
their words in dictionary form), on question templates filled with the kb's phrases ("how long does
X take", X = "standard delivery") and actions ("how do i V", V = "reset the thermostat"), with
interpolated absolute discounting, and
its unigrams can be mixed with the most frequent words of the general model (general_weight), so a
question that strays from the kb's words can still be heard. benchmarks/voice.py measures the mix:
on our set it cost more than it gained, so the default weight is 0 and the voice service falls
back to the general model only when the kb's model hears nothing.

Counts and vocabulary are bounded (MAX_SENTENCES, MAX_VOCAB) so a huge kb costs bounded time.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass

from .text import sentences

ORDER = 3
DISCOUNT = 0.7                # absolute discount per seen n-gram
GENERAL_WEIGHT = 0.0          # share of the unigram mass given to general English words: 0.05 made
                              # WER worse on benchmarks/voice.py (0.33 against 0.31) and decoding slower
MAX_SENTENCES = 50_000        # a kb's sentences used (the first ones in key order)
MAX_VOCAB = 20_000            # the kb's most frequent words kept
# How people ask about something (X): each is filled with the kb's own phrases, so the model knows both
# the way into a kb phrase ("how long does X") and the way out of it ("X take").
QUESTION_TEMPLATES = [
    "what is X", "what is the X", "what are the X", "what does X mean", "what does X do", "what happens to X",
    "what if X", "how do i X", "how do i get X", "how do i use X", "how do i change my X", "how can i X",
    "how does X work", "how long does X take", "how long do X last", "how long do the X last",
    "how long do i have to X", "how much does X cost", "how much is X", "how many X can i have", "how many X",
    "how often X", "can i X", "can i get X", "can i pay X", "can you X", "do you X", "do you have X", "do i need X",
    "does the X", "is there X", "is X free", "is the X", "are there X", "where is my X", "where can i X",
    "where do i X", "when does X", "when does the X", "when will i get my X", "when will X", "when can i X",
    "why is my X", "why does the X", "which X do you accept", "which X", "who X", "will i X", "should i X",
    "tell me about X", "i want to X", "i need X", "i need to X", "my X", "the X", "X", "X please",
]
# The same for actions (V: "hold the dial"); its phrase follows "the", "my" or "a" as a speaker puts it.
ACTION_TEMPLATES = ["how do i V", "how can i V", "can i V", "where do i V", "when can i V", "do i need to V",
                    "i want to V", "what happens if i V", "how long do i have to V"]
DETERMINERS = frozenset("the a an your my any every our".split())
SMALL_TALK = ["hello", "hi", "thank you", "thanks", "yes", "no", "okay", "goodbye"]
STOPWORDS = frozenset("""a an the and or but if then than of to in on at by for with from into onto about as is are was
were be been being it its this that these those there here i you we they he she my your our their me us them do does
did done can could will would should may might must not no yes so too very just also all any each every some such
what which who whom whose when where why how up down out over under again once""".split())
MAX_PHRASES = 400             # the kb's phrases that fill the templates (the most frequent)


@dataclass
class LanguageModel:
    arpa: str               # the model, in ARPA text (what PocketSphinx reads)
    vocab: list[str]        # its words, for the dictionary


def corpus(texts: list[str]) -> list[list[str]]:
    """The training sentences: the kb's own (bounded), and questions about its phrases."""
    out: list[list[str]] = []
    for text in texts:
        out += sentences(text)
        if len(out) >= MAX_SENTENCES:
            break
    out = out[:MAX_SENTENCES]
    out += [v for v in (_base_forms(s) for s in out) if v]      # "batteries lasts" -> "battery last"
    fills = [" ".join(p) for p, _ in phrases(out).most_common(MAX_PHRASES)]
    asked = [t.replace("X", f).split() for t in QUESTION_TEMPLATES for f in fills]
    actions = [f"{v} {d} {n}" for v, n in verb_phrases(out).most_common(MAX_PHRASES) for d in ("the", "my", "a")]
    asked += [t.replace("V", a).split() for t in ACTION_TEMPLATES for a in actions]
    return out + asked + [s.split() for s in SMALL_TALK]


def verb_phrases(sents: list[list[str]]) -> Counter:
    """What the kb says one does to something: a word, a determiner, a phrase ("hold the dial", "change
    your password", "return any item"), as (verb, "the phrase") in its base form, counted."""
    found: Counter = Counter()
    for s in sents:
        for i in range(len(s) - 2):
            verb, det = s[i], s[i + 1]
            if verb in STOPWORDS or det not in DETERMINERS:
                continue
            run = []
            for w in s[i + 2:i + 5]:
                if w in STOPWORDS:
                    break
                run.append(w)
            if run:
                found[(_base(verb), " ".join(run[:2]))] += 1
    return found


def _base(word: str) -> str:
    """The word without -s, -ing or -ed when what is left (or it with an -e) is a dictionary word."""
    from .lexicon import LEXICON
    for suffix in ("ing", "ed", "s"):
        stem = word[:-len(suffix)]
        if word.endswith(suffix) and len(stem) >= 3 and not word.endswith("ss"):
            for base in (stem + "e", stem):
                if base in LEXICON:
                    return base
    return word


def _base_forms(sent: list[str]) -> list[str] | None:
    """The sentence with its inflected words in their dictionary forms (lasts -> last, tracking -> track,
    printed -> print), which a speaker uses as often; None when it has none."""
    out = [_base(w) for w in sent]
    return out if out != sent else None


def phrases(sents: list[list[str]]) -> Counter:
    """The kb's content phrases: one to three words in a row, none of them a stopword ("express delivery",
    "batteries", "return labels"), counted."""
    found: Counter = Counter()
    for s in sents:
        run: list[str] = []
        for w in s + ["."]:
            if w in STOPWORDS or w == ".":
                for size in range(1, min(3, len(run)) + 1):
                    for i in range(len(run) - size + 1):
                        found[tuple(run[i:i + size])] += 1
                run = []
            else:
                run.append(w)
    return found


def build(texts: list[str], general: dict[str, float] | None = None, general_weight: float = GENERAL_WEIGHT,
          can_say=lambda w: True) -> LanguageModel:
    """The kb's trigram model; `general` maps general English words to their unigram probabilities.
    Words `can_say` refuses (no pronunciation) are left out."""
    sents = [[w for w in s if can_say(w)] for s in corpus(texts)]
    sents = [s for s in sents if s]
    unigrams = Counter(w for s in sents for w in s)
    kept = {w for w, _ in unigrams.most_common(MAX_VOCAB)}
    sents = [[w if w in kept else None for w in s] for s in sents]
    counts: list[Counter] = [Counter() for _ in range(ORDER + 1)]       # counts[n][ngram tuple]
    for s in sents:
        padded = ["<s>"] + s + ["</s>"]
        for n in range(1, ORDER + 1):
            for i in range(len(padded) - n + 1):
                gram = tuple(padded[i:i + n])
                if None not in gram and gram != ("<s>",):
                    counts[n][gram] += 1
    general = {w: p for w, p in (general or {}).items() if can_say(w)}
    if not general:
        general_weight = 0.0
    vocab = sorted(kept | set(general))
    probs = [dict() for _ in range(ORDER + 1)]       # probs[n][gram] = probability
    bows = [dict() for _ in range(ORDER + 1)]        # bows[n][history gram] = back-off weight
    total = sum(c for g, c in counts[1].items())
    general_total = sum(general.values()) or 1.0
    floor = 1.0 / (len(vocab) + 1)
    for w in vocab + ["</s>"]:
        kb_p = counts[1].get((w,), 0) / total
        gen_p = general.get(w, 0.0) / general_total
        probs[1][(w,)] = (1 - general_weight) * kb_p + general_weight * gen_p or floor * 1e-3
    for n in range(2, ORDER + 1):
        by_history: dict[tuple, list[tuple]] = defaultdict(list)
        for gram in counts[n]:
            by_history[gram[:-1]].append(gram)
        for history, grams in by_history.items():
            seen = sum(counts[n][g] for g in grams)
            bow = DISCOUNT * len(grams) / seen
            bows[n - 1][history] = bow
            for g in grams:
                probs[n][g] = (counts[n][g] - DISCOUNT) / seen + bow * _backoff(probs, bows, g[1:])
    return LanguageModel(_arpa(probs, bows), vocab)


def _backoff(probs: list[dict], bows: list[dict], gram: tuple) -> float:
    """P(gram[-1] | gram[:-1]) under the model so far (ARPA's back-off rule)."""
    n = len(gram)
    if gram in probs[n]:
        return probs[n][gram]
    if n == 1:
        return 0.0
    return bows[n - 1].get(gram[:-1], 1.0) * _backoff(probs, bows, gram[1:])


def _arpa(probs: list[dict], bows: list[dict]) -> str:
    probs[1][("<s>",)] = 0.0                        # never predicted; only a history
    lines = ["\\data\\"] + [f"ngram {n}={len(probs[n])}" for n in range(1, ORDER + 1)] + [""]
    for n in range(1, ORDER + 1):
        lines.append(f"\\{n}-grams:")
        for gram, p in sorted(probs[n].items()):
            logp = -99.0 if p <= 0 else math.log10(p)
            bow = bows[n].get(gram) if n < ORDER else None
            lines.append(f"{logp:.5f} {' '.join(gram)}" + (f" {math.log10(bow):.5f}" if bow else ""))
        lines.append("")
    lines.append("\\end\\")
    return "\n".join(lines) + "\n"
