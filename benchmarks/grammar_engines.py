"""xgrammar against llguidance, the two maintained constrained-decoding engines, on the default model's
tokenizer: what llmos's driver pays per schema (compile) and per constrained token (fill the mask).

For each schema: the first compile, then per-token mask time while a matcher walks a valid answer
token by token (the answer is the schema's example, tokenized by the model's tokenizer), both
engines in the same run, in turns. llmos uses xgrammar (drivers/constraints.py); this is the
measurement behind that choice (issue 19: "measure llguidance beside it and keep the faster").

    pip install llguidance       # not a dependency of llmos
    python benchmarks/grammar_engines.py
"""

from __future__ import annotations

import json
import statistics
import time

from report import machine_line, print_table

SCHEMAS = {
    "person": ({"type": "object", "additionalProperties": False, "required": ["name", "age", "city"],
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}}},
               {"name": "Ada Lovelace", "age": 36, "city": "London"}),
    "order": ({"type": "object", "required": ["id", "items", "total", "status"], "properties": {
        "id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
        "items": {"type": "array", "maxItems": 8, "items": {
            "type": "object", "required": ["sku", "qty"],
            "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}}},
        "total": {"type": "number"}, "status": {"enum": ["open", "paid", "shipped"]}}},
              {"id": "ABC-1234", "items": [{"sku": "pen", "qty": 2}, {"sku": "ink", "qty": 1}], "total": 12.5,
               "status": "paid"}),
}


def tokenizer():
    from transformers import AutoTokenizer

    from llmos.kernel.registry import resolve
    spec = resolve("smollm2-135m-instruct")
    return AutoTokenizer.from_pretrained(spec.path, gguf_file=spec.gguf_file, local_files_only=True)


class XGrammar:
    name = "xgrammar"
    separators = (", ", ": ")     # any_whitespace=False writes JSON so

    def __init__(self, tok, vocab: int):
        import xgrammar as xgr
        self.xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.vocab = vocab

    def compile(self, schema: dict):
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)

    def walk(self, grammar, tokens: list[int]) -> list[float]:
        matcher, mask = self.xgr.GrammarMatcher(grammar), self.xgr.allocate_token_bitmask(1, self.vocab)
        times = []
        for t in tokens:
            started = time.perf_counter()
            matcher.fill_next_token_bitmask(mask, 0)
            times.append(time.perf_counter() - started)
            assert matcher.accept_token(t), "the answer does not follow the grammar"
        return times


class LLGuidance:
    name = "llguidance"
    separators = (",", ":")       # whitespace_flexible=False writes compact JSON

    def __init__(self, tok, vocab: int):
        import llguidance
        import llguidance.hf
        import llguidance.torch
        self.llg = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(tok, n_vocab=vocab)
        self.vocab = vocab

    def compile(self, schema: dict):
        grammar = self.llg.LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                              defaults={"whitespace_flexible": False})
        matcher = self.llg.LLMatcher(self.tokenizer, grammar)   # llguidance compiles lazily, in the matcher
        if matcher.is_error():
            raise RuntimeError(matcher.get_error())
        return grammar

    def walk(self, grammar, tokens: list[int]) -> list[float]:
        import llguidance.torch as lt
        matcher, mask = self.llg.LLMatcher(self.tokenizer, grammar), lt.allocate_token_bitmask(1, self.vocab)
        times = []
        for t in tokens:
            started = time.perf_counter()
            lt.fill_next_token_bitmask(matcher, mask, 0)
            times.append(time.perf_counter() - started)
            assert matcher.consume_token(t), matcher.get_error()
        return times


def main() -> int:
    tok = tokenizer()
    vocab = 49152
    engines = [XGrammar(tok, vocab), LLGuidance(tok, vocab)]
    rows = []
    for name, (schema, example) in SCHEMAS.items():
        for engine in engines:
            tokens = tok(json.dumps(example, separators=engine.separators), add_special_tokens=False).input_ids
            compiles, masks = [], []
            for _ in range(3):
                started = time.perf_counter()
                grammar = engine.compile(schema)
                compiles.append(time.perf_counter() - started)
                masks += engine.walk(grammar, tokens)
            rows.append([name, engine.name, f"{compiles[0] * 1000:.1f}", f"{statistics.median(compiles) * 1000:.1f}",
                         f"{statistics.median(masks) * 1e6:.0f}", f"{max(masks) * 1e6:.0f}", len(tokens)])
    print(machine_line())
    print_table("JSON schema on SmolLM2's tokenizer (49,152 tokens)",
                ["schema", "engine", "compile ms (first)", "compile ms (median of 3)", "mask us (median)",
                 "mask us (max)", "tokens"], rows,
                ["mask: fill one sequence's next-token bitmask, per token of a valid answer"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
