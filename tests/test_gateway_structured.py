"""Structured generation through `llmos serve` with the clients people use: the `openai` SDK (sync and
async: a Pydantic model parsed, forced and auto tool calls over two turns, logprobs, n), LangChain
(`with_structured_output`, `bind_tools`) and litellm, against the session's real kernel on the default
model; and the bad input each parameter gets a 400 for, naming it."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from llmos.specs.modelspec import DEFAULT_MODEL
from llmos.userland.gateway.testing import GatewayProcess

pytestmark = pytest.mark.real_model
pytest.importorskip("xgrammar")

EXTRACT = [{"role": "user", "content": "Extract the person as JSON: Ada Lovelace is 36 and lives in London."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris right now?"}]


class Person(BaseModel):
    name: str
    age: int
    city: str


@pytest.fixture(scope="module")
def gateway(real_kernel):
    with GatewayProcess(real_kernel.cli_env()) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def test_a_pydantic_model_is_parsed_from_the_answer(client):
    r = client.beta.chat.completions.parse(model=DEFAULT_MODEL, messages=EXTRACT, response_format=Person,
                                           temperature=0, max_tokens=80)
    person = r.choices[0].message.parsed
    assert isinstance(person, Person) and person.age == 36 and "Ada" in person.name and person.city == "London"


def test_json_object_mode_answers_an_object(client):
    r = client.chat.completions.create(model=DEFAULT_MODEL, messages=EXTRACT, temperature=0,
                                       response_format={"type": "json_object"}, max_tokens=60)
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].message.content.startswith("{")


def test_a_streamed_schema_answer_joins_into_valid_json(client):
    schema = Person.model_json_schema()
    chunks = list(client.chat.completions.create(
        model=DEFAULT_MODEL, messages=EXTRACT, temperature=0, max_tokens=80, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    Person.model_validate_json(text)


def test_a_forced_tool_call_then_the_tools_answer_in_a_second_turn(client):
    first = client.chat.completions.create(model=DEFAULT_MODEL, messages=ASK_WEATHER, tools=[WEATHER],
                                           tool_choice="required", temperature=0, max_tokens=60)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] == "Paris"
    turn = ASK_WEATHER + [choice.message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"}]
    second = client.chat.completions.create(model=DEFAULT_MODEL, messages=turn, tools=[WEATHER], temperature=0,
                                            max_tokens=40)
    assert second.choices[0].finish_reason in ("stop", "length")
    assert "18" in second.choices[0].message.content or "sunny" in second.choices[0].message.content.lower()


def test_an_auto_tool_loop_of_two_turns(client):
    """auto: the model decides; the loop runs a called tool and asks again until an answer comes."""
    messages = list(ASK_WEATHER)
    for _ in range(2):
        r = client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, tools=[WEATHER],
                                           tool_choice="auto", temperature=0, max_tokens=60)
        message = r.choices[0].message
        if not message.tool_calls:
            break
        assert r.choices[0].finish_reason == "tool_calls"
        messages.append(message.model_dump(exclude_none=True))
        messages += [{"role": "tool", "tool_call_id": c.id, "content": "18 C and sunny"} for c in message.tool_calls]
    assert message.content and not message.tool_calls


def test_a_named_tool_call_streams_as_tool_call_deltas(client):
    chunks = list(client.chat.completions.create(
        model=DEFAULT_MODEL, messages=ASK_WEATHER, tools=[WEATHER], temperature=0, max_tokens=60, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [tc.function.name for tc in calls] == ["get_weather"] and calls[0].index == 0 and calls[0].id
    assert json.loads(calls[0].function.arguments)["city"] == "Paris"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_logprobs_and_top_logprobs_whole_and_streamed(client):
    r = client.chat.completions.create(model=DEFAULT_MODEL, messages=ASK_WEATHER, temperature=0, max_tokens=8,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens and all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.logprob == pytest.approx(t.top_logprobs[0].logprob) for t in content)    # greedy
    streamed = [t for c in client.chat.completions.create(
        model=DEFAULT_MODEL, messages=ASK_WEATHER, temperature=0, max_tokens=8, logprobs=True, stream=True)
        if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]


def test_n_choices_differ_and_each_is_reproducible(client):
    ask = dict(model=DEFAULT_MODEL, messages=ASK_WEATHER, temperature=1.0, max_tokens=16, n=2, seed=11)
    r, again = client.chat.completions.create(**ask), client.chat.completions.create(**ask)
    texts = [c.message.content for c in r.choices]
    assert [c.index for c in r.choices] == [0, 1] and texts[0] != texts[1]
    assert texts == [c.message.content for c in again.choices]


def test_completions_take_token_arrays_and_legacy_logprobs(client):
    r = client.completions.create(model=DEFAULT_MODEL, prompt=[[504, 3458, 282], [504, 3458, 282]], max_tokens=4,
                                  temperature=0, logprobs=2)
    assert [c.index for c in r.choices] == [0, 1] and r.choices[0].text == r.choices[1].text
    assert len(r.choices[0].logprobs.tokens) == 4 and len(r.choices[0].logprobs.top_logprobs[0]) == 2


async def test_the_async_client_parses_too(gateway):
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as c:
        r = await c.beta.chat.completions.parse(model=DEFAULT_MODEL, messages=EXTRACT, response_format=Person,
                                                temperature=0, max_tokens=80)
    assert r.choices[0].message.parsed.age == 36


@pytest.mark.parametrize("extra, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"n": 9}, "n"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"logit_bias": {"99999999": 5}}, "logit_bias"),
    ({"presence_penalty": 3}, "presence_penalty"),
])
def test_bad_structured_parameters_are_400_naming_them(client, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=DEFAULT_MODEL, messages=ASK_WEATHER, max_tokens=4, **extra)
    assert caught.value.status_code == 400 and caught.value.body["param"] == param, caught.value.body


def test_langchain_structured_output_and_bound_tools(gateway):
    chat_openai = pytest.importorskip("langchain_openai")
    llm = chat_openai.ChatOpenAI(base_url=gateway.url + "/v1", api_key="unused", model=DEFAULT_MODEL, temperature=0,
                                 max_tokens=80, max_retries=0)
    person = llm.with_structured_output(Person, method="json_schema").invoke(EXTRACT[0]["content"])
    assert isinstance(person, Person) and person.age == 36
    called = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke(ASK_WEATHER[0]["content"])
    assert called.tool_calls[0]["name"] == "get_weather" and called.tool_calls[0]["args"]["city"] == "Paris"


def test_litellm_json_schema_and_tools(gateway, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")      # no fetch of its price list at import
    litellm = pytest.importorskip("litellm")
    common = dict(model=f"openai/{DEFAULT_MODEL}", api_base=gateway.url + "/v1", api_key="unused", temperature=0,
                  max_tokens=80)
    r = litellm.completion(messages=EXTRACT, response_format=Person, **common)
    assert Person.model_validate_json(r.choices[0].message.content).age == 36
    r = litellm.completion(messages=ASK_WEATHER, tools=[WEATHER], tool_choice="required", **common)
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
