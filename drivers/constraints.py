"""Constrained decoding: a grammar per request, a token mask per constrained sequence per step.

infer's `constraint` (a JSON schema, any JSON object, a regex, an EBNF grammar, or a choice of
strings; checked by the kernel in kernel/syscalls/structured.py) is compiled by xgrammar against
the model's vocabulary into a grammar whose matcher says, at each step, which tokens may come
next. The engine fills one bitmask row per constrained sequence and masks its logits before the
sampler; sequences without a constraint in the same batch are not touched. The matcher then
accepts the token sampled, so every text that ends by the grammar's own end is valid by
construction.

xgrammar takes seconds to import and its tokenizer table a fraction of one, which would stall every
request in the batch if the first constrained request paid it: the driver calls `prepare` when it
loads a model, beside the load's own seconds. Compiled grammars are cached per principal and
constraint (its canonical text; up to MAX_CACHED), so a schema sent again costs nothing; per
principal, as the prefix cache is, because a compile takes milliseconds that a cached schema does
not, and another tenant could time that to learn which schemas its neighbours send. A compile error
is the request's own: EINVAL with the engine's message, raised before the engine admits it.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

MAX_CACHED = 256               # compiled grammars kept per engine, least recently used dropped
COMPILE_THREADS = 1            # the driver's compute threads are the model's


class ConstraintError(ValueError):
    """The engine cannot compile this constraint: the request alone is refused (EINVAL)."""

    errno = "EINVAL"


class Grammars:
    """Compiled grammars for one model's tokenizer, and matchers made from them."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int]):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_ids = sorted(stop_ids)
        self._compiler = None
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self.compiled = 0          # grammars compiled (not found in the cache)

    def prepare(self) -> bool:
        """Import xgrammar and build the tokenizer table now; False where xgrammar is not installed."""
        try:
            self._compiler or self._make_compiler()
        except ImportError:
            return False
        return True

    def matcher(self, constraint: dict, salt: str = ""):
        """A fresh matcher for the constraint; ConstraintError if it does not compile. salt: whose cache
        entry it is (the request's cache_salt: its principal)."""
        try:
            import xgrammar as xgr
        except ImportError:
            raise ConstraintError("constrained decoding needs the xgrammar package, which this driver lacks") from None
        return xgr.GrammarMatcher(self._compiled(constraint, salt))

    def _compiled(self, constraint: dict, salt: str):
        key = salt + "\x00" + json.dumps(constraint, sort_keys=True)
        grammar = self._cache.get(key)
        if grammar is not None:
            self._cache.move_to_end(key)
            return grammar
        try:
            grammar = self._compile(constraint)
        except RuntimeError as exc:     # xgrammar's parse and conversion errors
            raise ConstraintError(f"the constraint does not compile: {_engine_message(exc)}") from None
        self.compiled += 1
        self._cache[key] = grammar
        if len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
        return grammar

    def _compile(self, constraint: dict):
        compiler = self._compiler or self._make_compiler()
        if "json_schema" in constraint:
            return compiler.compile_grammar(_schema_grammar(constraint["json_schema"], constraint.get("strict", True)))
        if "json" in constraint:       # an object (OpenAI's json_object), whatever it holds
            return compiler.compile_grammar(_schema_grammar('{"type": "object"}', strict=False))
        if "regex" in constraint:
            return compiler.compile_regex(constraint["regex"])
        if "grammar" in constraint:
            return compiler.compile_grammar(constraint["grammar"])
        alternatives = " | ".join(json.dumps(choice) for choice in constraint["choice"])
        return compiler.compile_grammar(f"root ::= {alternatives}")

    def _make_compiler(self):
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size,
                                                  stop_token_ids=self.stop_ids)
        self._compiler = xgr.GrammarCompiler(info, max_threads=COMPILE_THREADS, cache_enabled=False)
        return self._compiler


def _schema_grammar(schema: str, strict: bool) -> str:
    """The schema's grammar as EBNF, with every string character JSON-legal: xgrammar 0.2's rule for a
    string of bounded length lets control characters through, which no JSON parser takes."""
    import xgrammar as xgr

    text = str(xgr.Grammar.from_json_schema(schema, any_whitespace=False, strict_mode=strict))
    return text.replace(LAX_STRING_CHAR, JSON_STRING_CHAR)


LAX_STRING_CHAR = r'[^\"\\\r\n]'
JSON_STRING_CHAR = r'[^\0-\x1f\"\\]'


def _engine_message(exc: Exception) -> str:
    """xgrammar's message without its source location prefix ('[time] file.cc:line: ')."""
    text = str(exc).strip()
    if text.startswith("[") and "]" in text:
        text = text.split("]", 1)[1].strip()
        head, sep, rest = text.partition(": ")
        if sep and ".cc:" in head:
            text = rest
    return text[:1000]


_batch = None     # one xgrammar BatchGrammarMatcher: fills every constrained row's mask in one call


def mask_rows(logits, matchers: list, rows: list[int]) -> None:
    """Mask, in place, row rows[i] of logits [S, V] by matchers[i]: tokens it does not allow get -inf."""
    global _batch
    import xgrammar as xgr

    if _batch is None:
        _batch = xgr.BatchGrammarMatcher(max_threads=1)
    bitmask = xgr.allocate_token_bitmask(logits.shape[0], logits.shape[-1])
    _batch.batch_fill_next_token_bitmask(matchers, bitmask, indices=rows)
    xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), indices=rows)
