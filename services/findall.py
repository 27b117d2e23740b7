"""Every occurrence of many strings in one text, in one pass: Aho-Corasick over the text's tokens.

redact replaces a value it found once everywhere it appears. One regex search per value read the
whole text once per value: with a value per dozen characters (a text of names or emails), that is
quadratic, and 4 MiB of it ran for hours. Here the text is read once, whatever the number of values.

Tokens are runs of word characters and single other characters (whitespace is skipped): a string
that starts and ends at a word boundary, as the values wanted here do, begins and ends on token
boundaries wherever it occurs, so a match of its tokens, checked against the text, is an occurrence.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD_CHAR = re.compile(r"\w")


def whole_occurrences(text: str, needles: list[str]) -> dict[str, list[tuple[int, int]]]:
    """For each needle, its occurrences in text as `re.finditer(rf"(?<!\\w){re.escape(needle)}(?!\\w)")`
    gives them: (start, end), left to right, not overlapping each other. Linear in the text's length
    plus the needles' (and the occurrences found)."""
    found: dict[str, list[tuple[int, int]]] = {n: [] for n in needles}
    goto: list[dict[str, int]] = [{}]
    depth = [0]
    ends: list[dict[str, None]] = [{}]        # needles whose tokens end at this node
    for needle in found:
        tokens = _TOKEN.findall(needle)
        if not tokens or needle != needle.strip():
            found[needle] = _by_regex(text, needle)   # not the case for redact's values; kept exact anyway
            continue
        node = 0
        for token in tokens:
            nxt = goto[node].get(token)
            if nxt is None:
                goto.append({})
                depth.append(depth[node] + 1)
                ends.append({})
                nxt = goto[node][token] = len(goto) - 1
            node = nxt
        ends[node][needle] = None
    fail, out = _links(goto, ends)
    tokens = [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]
    node = 0
    for i, (token, _, end) in enumerate(tokens):
        while node and token not in goto[node]:
            node = fail[node]
        node = goto[node].get(token, 0)
        hit = node if ends[node] else out[node]
        while hit:
            start = tokens[i - depth[hit] + 1][1]
            if (start == 0 or not _WORD_CHAR.match(text, start - 1)) and not _WORD_CHAR.match(text, end):
                value = text[start:end]
                if value in ends[hit]:
                    spans = found[value]
                    if not spans or spans[-1][1] <= start:      # finditer's: not overlapping the one before
                        spans.append((start, end))
            hit = out[hit]
    return found


def _links(goto: list[dict[str, int]], ends: list[dict]) -> tuple[list[int], list[int]]:
    """Aho-Corasick's failure links (the longest proper suffix that is also a path) and output links
    (the nearest node down the failure chain where a needle ends), breadth first."""
    fail, out = [0] * len(goto), [0] * len(goto)
    queue = list(goto[0].values())
    for node in queue:
        for token, child in goto[node].items():
            f = fail[node]
            while f and token not in goto[f]:
                f = fail[f]
            fail[child] = goto[f].get(token, 0) if goto[f].get(token) != child else 0
            out[child] = fail[child] if ends[fail[child]] else out[fail[child]]
            queue.append(child)
    return fail, out


def _by_regex(text: str, needle: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(rf"(?<!\w){re.escape(needle)}(?!\w)", text)]
