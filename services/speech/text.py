"""Text as a recognizer hears it: lower-case words, numbers and symbols spelled out.

The language model is trained on it, the recognizer's words come out in it, and word error rates
compare it, so a knowledge base's "£7.95" and a speaker's "seven point nine five pounds" meet.
"""

from __future__ import annotations

import re

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((1_000_000_000, "billion"), (1_000_000, "million"), (1_000, "thousand"), (100, "hundred"))
_CURRENCY = {"£": "pounds", "$": "dollars", "€": "euros"}
_SYMBOLS = {"%": " percent", "&": " and ", "+": " plus ", "@": " at "}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_TOKEN = re.compile(r"([£$€]?)(\d[\d,]*(?:\.\d+)?)|[a-z]+(?:'[a-z]+)?", re.I)
MAX_NUMBER = 10 ** 12 - 1


def number_words(n: int) -> str:
    """231 -> 'two hundred thirty one' (up to MAX_NUMBER; past it, digit by digit)."""
    if n > MAX_NUMBER:
        return " ".join(_ONES[int(d)] for d in str(n))
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, name in _SCALES:
        if n >= size:
            head, rest = divmod(n, size)
            return f"{number_words(head)} {name}" + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError(n)


def _spell_number(currency: str, digits: str) -> str:
    whole, _, frac = digits.replace(",", "").partition(".")
    words = number_words(int(whole))
    if frac:
        words += " point " + " ".join(_ONES[int(d)] for d in frac)
    return words + (" " + _CURRENCY[currency] if currency else "")


def words(text: str) -> list[str]:
    """The words a speaker would say for the text: 'Returns take 30 days.' -> [returns, take, thirty, days]."""
    for symbol, spoken in _SYMBOLS.items():
        text = text.replace(symbol, spoken)
    out: list[str] = []
    for m in _TOKEN.finditer(text):
        if m.group(2):
            out += _spell_number(m.group(1), m.group(2)).split()
        else:
            out.append(m.group(0).lower())
    return out


def sentences(text: str) -> list[list[str]]:
    """The text's sentences (and lines: headings, list items), each as its words; empty ones dropped."""
    return [w for w in (words(s) for s in _SENTENCE_END.split(text)) if w]
