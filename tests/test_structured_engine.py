"""Structured generation in the engine: constraints, logprobs, penalties, logit_bias, min_tokens,
tool calls; on the tiny random model, whose choices are arbitrary, so every shape is enforced by the
grammar and the processors alone."""

from __future__ import annotations

import json
import math
import re

import jsonschema
import pytest

from harness import run_to_idle as run
from llmos.drivers import constraints
from llmos.drivers.engine import Engine, GenRequest
from llmos.drivers.loader import encode_prompt, load
from llmos.drivers.tools import ToolCallText
from llmos.kernel.syscalls.structured import tool_plan
from llmos.kernel import registry
from llmos.userland.testing import make_tiny_llama

pytest.importorskip("xgrammar")

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["ok", "n", "tag", "word", "list"],
          "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 99},
                         "tag": {"enum": ["red", "green", "blue"]}, "word": {"type": "string", "pattern": "^[a-z]{1,8}$"},
                         "list": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                                  "maxItems": 3}}}


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return load(registry.resolve(make_tiny_llama(tmp_path_factory.mktemp("llama"))))


def request(rid, lm, max_tokens=64, temperature=1.0, seed=None, prompt="hello", **kw) -> GenRequest:
    return GenRequest(rid, lm.tokenizer(prompt).input_ids, max_tokens, temperature, 1.0, 0, [],
                      rid if seed is None else seed, **kw)


def engine(lm) -> Engine:
    return Engine(lm, kv_budget_bytes=1 << 23)


def test_two_hundred_schema_answers_sampled_hot_all_validate(lm):
    c = {"json_schema": json.dumps(SCHEMA), "strict": True}
    out = run(engine(lm), [request(i, lm, max_tokens=96, constraint=c) for i in range(1, 201)])
    assert len(out) == 200 and all(r["finish"] == "stop" for r in out.values())
    for r in out.values():
        jsonschema.validate(json.loads(r["text"]), SCHEMA)
    assert len({r["text"] for r in out.values()}) > 50    # sampled, not one answer forced


def test_unconstrained_neighbours_write_what_they_write_alone(lm):
    alone = run(engine(lm), [request(i, lm, max_tokens=24) for i in (1, 2)])
    mixed = run(engine(lm), [request(1, lm, max_tokens=24), request(2, lm, max_tokens=24),
                             request(3, lm, constraint={"json": True}, max_tokens=24)])
    assert [mixed[i]["ids"] for i in (1, 2)] == [alone[i]["ids"] for i in (1, 2)]


@pytest.mark.parametrize("constraint, check", [
    ({"regex": r"[0-9]{3}-[a-z]{2,4}"}, lambda t: re.fullmatch(r"[0-9]{3}-[a-z]{2,4}", t)),
    ({"choice": ["yes", "no", "maybe later"]}, lambda t: t in ("yes", "no", "maybe later")),
    ({"grammar": 'root ::= "(" [a-c]+ ")" | "none"'}, lambda t: re.fullmatch(r"\([a-c]+\)|none", t)),
])
def test_each_shape_holds_for_every_sample(lm, constraint, check):
    out = run(engine(lm), [request(i, lm, max_tokens=200, constraint=constraint) for i in range(1, 21)])
    assert all(r["finish"] == "stop" and check(r["text"]) for r in out.values()), out


def test_any_json_object_parses_whenever_it_ends(lm):
    """A random model nests JSON without end; each answer that ended by the grammar parses."""
    out = run(engine(lm), [request(i, lm, max_tokens=200, constraint={"json": True}) for i in range(1, 21)])
    ended = [r["text"] for r in out.values() if r["finish"] == "stop"]
    assert all(t.startswith("{") for t in ended)
    assert len(ended) >= 5 and all(isinstance(json.loads(t), dict) for t in ended)


@pytest.mark.parametrize("constraint, words", [
    ({"json_schema": "{\"type\": \"nonsense\"}", "strict": True}, "nonsense"),
    ({"regex": "(unclosed"}, "parenthesis"),
    ({"grammar": "root ::= "}, "EBNF"),
])
def test_a_shape_the_engine_refuses_is_einval_for_that_request_alone(lm, constraint, words):
    out = run(engine(lm), [request(1, lm, constraint=constraint), request(2, lm, max_tokens=8)])
    assert out[1]["finish"] == "error" and out[1]["errno"] == "EINVAL" and words in out[1]["message"]
    assert out[2]["finish"] in ("stop", "length") and out[2]["errno"] is None


def test_a_constrained_request_resumed_elsewhere_goes_on_as_it_would_have(lm):
    c = {"json_schema": json.dumps(SCHEMA), "strict": True}
    whole = run(engine(lm), [request(1, lm, max_tokens=96, constraint=c, seed=7)])[1]
    half = whole["ids"][:len(whole["ids"]) // 2]
    rest = run(engine(lm), [request(1, lm, max_tokens=96, constraint=c, seed=7, resume=half)])[1]
    assert half + rest["ids"] == whole["ids"]


def test_logprobs_are_the_distribution_the_token_came_from(lm):
    out = run(engine(lm), [request(1, lm, temperature=0.0, max_tokens=12, logprobs=True, top_logprobs=5),
                           request(2, lm, temperature=0.0, max_tokens=12)])
    entries = out[1]["logprobs"]
    assert len(entries) == len(out[1]["ids"]) == 12 and out[2]["logprobs"] == []
    for entry, token in zip(entries, out[1]["ids"]):
        top = entry["top_logprobs"]
        assert len(top) == 5 and [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert entry["logprob"] == pytest.approx(top[0]["logprob"])      # greedy took the most likely
        assert entry["token"] == lm.tokenizer.decode([token]) and sum(math.exp(t["logprob"]) for t in top) <= 1.0001


def test_logit_bias_forces_and_bans(lm):
    free = run(engine(lm), [request(1, lm, temperature=0.0, max_tokens=6)])[1]["ids"]
    target = next(t for t in range(10, 300) if t not in free and t not in lm.eos_token_ids)
    forced = run(engine(lm), [request(1, lm, temperature=0.0, max_tokens=6, logit_bias=[[target, 100.0]])])[1]
    assert forced["ids"] == [target] * 6
    banned = run(engine(lm), [request(1, lm, temperature=0.0, max_tokens=6, logit_bias=[[free[0], -100.0]])])[1]
    assert banned["ids"][0] != free[0]


def test_frequency_and_presence_penalties_stop_a_repeated_token(lm):
    target = 77
    bias = [[target, 2.5]]      # enough to win every step, by less than a penalty of 2 takes back
    plain = run(engine(lm), [request(1, lm, temperature=0.0, max_tokens=10, logit_bias=bias)])[1]["ids"]
    freq = run(engine(lm), [request(1, lm, temperature=0.0, max_tokens=10, logit_bias=bias,
                                    frequency_penalty=2.0)])[1]["ids"]
    pres = run(engine(lm), [request(1, lm, temperature=0.0, max_tokens=10, logit_bias=bias,
                                    presence_penalty=2.0)])[1]["ids"]
    assert plain.count(target) == 10
    assert freq.count(target) <= 2 and pres.count(target) == 1


def test_min_tokens_holds_off_the_end(lm):
    eos = lm.eos_token_ids[0]
    quick = run(engine(lm), [request(1, lm, temperature=0.0, max_tokens=20, logit_bias=[[eos, 100.0]])])[1]
    held = run(engine(lm), [request(1, lm, temperature=0.0, max_tokens=20, logit_bias=[[eos, 100.0]],
                                    min_tokens=7)])[1]
    assert len(quick["ids"]) == 1 and quick["finish"] == "stop"
    assert len(held["ids"]) == 8 and held["finish"] == "stop"


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "pattern": "^[A-Z][a-z]{1,10}$"},
                                     "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"], "additionalProperties": False}}},
         {"type": "function", "function": {"name": "get_time", "description": "", "parameters": {
             "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}}]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_a_forced_tool_call_always_parses_into_a_given_tool_with_valid_arguments(lm, choice):
    tools, parse, constraint = tool_plan(TOOLS, choice, None, chat=True)
    out = run(engine(lm), [request(i, lm, max_tokens=120, constraint=constraint, tool_parse=parse)
                           for i in range(1, 21)])
    params = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for r in out.values():
        assert r["finish"] == "tool_calls" and r["text"] == "" and len(r["tool_calls"]) == 1
        call = r["tool_calls"][0]
        assert call["type"] == "function" and call["id"].startswith("call_")
        if isinstance(choice, dict):
            assert call["function"]["name"] == "get_time"
        jsonschema.validate(json.loads(call["function"]["arguments"]), params[call["function"]["name"]])


def test_a_template_without_tools_gets_them_as_a_note_and_calls_and_results_as_text(lm):
    messages = [{"role": "user", "content": "time?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{\"zone\": \"UTC\"}"}}]},
                {"role": "tool", "content": "12:00", "tool_call_id": "c1"}]
    text = lm.tokenizer.decode(encode_prompt(lm, None, messages, TOOLS))
    assert '"name": "get_weather"' in text and "<tools>" in text               # the note lists the functions
    assert '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>' in text
    assert "<tool_response>\n12:00\n</tool_response>" in text


def test_the_grammar_cache_keeps_its_bound(lm, monkeypatch):
    monkeypatch.setattr(constraints, "MAX_CACHED", 3)
    grammars = engine(lm).grammars
    for i in range(5):
        grammars.matcher({"choice": [f"answer {i}"]})
    grammars.matcher({"choice": ["answer 4"]})                                 # the newest is still there
    assert len(grammars._cache) == 3 and grammars.compiled == 5


def test_a_cached_grammar_is_its_principals_alone(lm):
    """A cache hit is faster than a compile: shared, it would tell one tenant which schemas another sends."""
    grammars = engine(lm).grammars
    for salt in ("alice", "bob", "alice"):
        grammars.matcher({"choice": ["yes", "no"]}, salt)
    assert grammars.compiled == 2

def test_auto_tool_text_shows_prose_and_holds_a_call():
    text = ToolCallText("auto", "hermes")
    shown = "".join(text.push(d) for d in ["Let me ", "check. <tool", "_call>\n{\"name\": \"get_time\", ",
                                           "\"arguments\": {\"zone\": \"UTC\"}}\n</tool_call>"])
    rest, calls = text.finish()
    assert shown + rest == "Let me check. " and [c["function"]["name"] for c in calls] == ["get_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"zone": "UTC"}


def test_auto_tool_text_that_is_not_a_call_is_let_out_whole():
    text = ToolCallText("auto", "hermes")
    shown = "".join(text.push(d) for d in ["a <tool", "_call> not json"])
    rest, calls = text.finish()
    assert calls == [] and shown + rest == "a <tool_call> not json"
    partial = ToolCallText("auto", "hermes")
    assert partial.push("ends with <to") == "ends with " and partial.finish() == ("<to", [])
