"""infer's structured-generation arguments (ABI 1.1) through a real kernel: what the kernel checks,
what the driver refuses, and what comes back in stream frames and the result."""

from __future__ import annotations

import json

import jsonschema
import pytest
from harness import raised

pytest.importorskip("xgrammar")

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["answer", "score"],
          "properties": {"answer": {"enum": ["yes", "no"]}, "score": {"type": "integer", "minimum": 1, "maximum": 5}}}
WEATHER = {"type": "function", "function": {"name": "get_weather",
                                            "parameters": {"type": "object", "additionalProperties": False,
                                                           "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                                                           "required": ["city"]}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def test_hello_says_the_kernel_speaks_abi_1_1(kernel):
    with kernel.client("structured") as c:
        assert (c.info["abi"], c.info["abi_minor"]) == (1, 1)


def test_a_schema_constrained_answer_validates(kernel):
    with kernel.client("structured") as c:
        for seed in range(5):
            result = c.infer(prompt="Rate it:", constraint={"json_schema": SCHEMA}, seed=seed, temperature=1.0,
                             max_tokens=40)
            assert result["finish_reason"] == "stop"
            jsonschema.validate(json.loads(result["text"]), SCHEMA)


@pytest.mark.parametrize("args, words", [
    ({"constraint": {"json_schema": "{not json"}}, "'constraint.json_schema' is not JSON"),
    ({"constraint": {"regex": "a", "choice": ["b"]}}, "exactly one of"),
    ({"constraint": {"json": False}}, "'constraint.json' must be true"),
    ({"constraint": {"choice": []}}, "'constraint.choice'"),
    ({"tool_choice": "required"}, "'tool_choice' needs 'tools'"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not in 'tools'"),
    ({"tools": [WEATHER, WEATHER]}, "given twice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"top_logprobs": 3}, "'top_logprobs' needs 'logprobs'"),
    ({"logprobs": True, "top_logprobs": 20, "max_tokens": 20000}, "lower 'max_tokens' or 'top_logprobs'"),
    ({"logit_bias": {"x": 1}}, "'logit_bias' keys are token ids"),
    ({"logit_bias": {"5": 101}}, "'logit_bias' values"),
    ({"min_tokens": 9, "max_tokens": 8}, "'min_tokens'"),
])
def test_bad_structured_arguments_are_einval_naming_the_argument(kernel, args, words):
    with kernel.client("structured") as c:
        error = raised(c.infer, messages=ASK, **args)
    assert error.errno == "EINVAL" and words in error.message, error.message


@pytest.mark.parametrize("args, words", [
    ({"constraint": {"regex": "(unclosed"}}, "does not compile"),
    ({"logit_bias": {"999999": 5}}, "below this model's vocabulary"),
])
def test_what_only_the_model_can_refuse_is_einval_from_the_driver(kernel, args, words):
    with kernel.client("structured") as c:
        error = raised(c.infer, prompt="x", **args)
        assert c.infer(prompt="still here", max_tokens=2)["usage"]["completion_tokens"] >= 1
    assert error.errno == "EINVAL" and words in error.message, error.message


def test_logprobs_come_with_each_streamed_delta_and_in_the_result(kernel):
    with kernel.client("structured") as c:
        stream = c.stream(prompt="Once upon", max_tokens=10, temperature=0.0, logprobs=True, top_logprobs=2)
        streamed = []
        for _ in stream:
            streamed += stream.logprobs or []
        result = stream.result
    assert len(result["logprobs"]) == result["usage"]["completion_tokens"] == len(streamed)
    assert result["logprobs"] == streamed and all(len(e["top_logprobs"]) == 2 for e in streamed)
    assert "".join(e["token"] for e in streamed).startswith(result["text"][:3])


def test_a_forced_tool_call_comes_back_parsed(kernel):
    with kernel.client("structured") as c:
        result = c.infer(messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=160, seed=3,
                         temperature=1.0)
    assert result["finish_reason"] == "tool_calls" and result["text"] == ""
    (call,) = result["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"])["city"] in ("Paris", "Oslo")


def test_a_tool_loop_renders_back(kernel):
    """The assistant's call and the tool's result go back into the prompt of the next turn."""
    turn = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"}]
    no_call = [turn[0], {"role": "assistant", "content": ""}, turn[2]]
    with kernel.client("structured") as c:
        result = c.infer(messages=turn, max_tokens=8)
        without = c.infer(messages=no_call, max_tokens=8)
    # the call's JSON is in the prompt: dropped on the way, the two prompts would be the same length
    assert result["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"] + 10


def test_a_prompt_as_token_ids_writes_what_its_text_writes(kernel, tiny_llama):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_llama)("The quick brown fox").input_ids
    with kernel.client("structured") as c:
        by_text = c.infer(prompt="The quick brown fox", max_tokens=8, temperature=0.0)
        by_ids = c.infer(prompt_ids=ids, max_tokens=8, temperature=0.0)
        assert by_ids["text"] == by_text["text"] and by_ids["usage"] == by_text["usage"]
        assert "exactly one of" in raised(c.infer, prompt="x", prompt_ids=ids).message
        assert "'prompt_ids' must be token ids" in raised(c.infer, prompt_ids=[1, -2]).message
        assert "vocabulary" in raised(c.infer, prompt_ids=[1, 10**6]).message
