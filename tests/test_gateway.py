"""`llmos serve` against the real default model, through the official `openai` package (and httpx for
what an SDK would never send). The gateway runs as a real subprocess without API keys, as the
operator of the session's real kernel.
"""

from __future__ import annotations

import asyncio
import itertools

import httpx
import openai
import pytest

from harness import leave_before_the_answer, served_requests
from llmos.specs.modelspec import DEFAULT_EMBED_MODEL, DEFAULT_MODEL
from llmos.userland.gateway.testing import GatewayProcess
from llmos.userland.testing import wait_until

pytestmark = pytest.mark.real_model
HELLO = [{"role": "system", "content": "You answer in one short sentence."},
         {"role": "user", "content": "What is the capital of France?"}]
# A raw prompt the model goes on with for a long time: a request that is still generating when its client leaves.
LONG = {"model": DEFAULT_MODEL, "prompt": "Chapter 1\n\nThe old house at the end of the street had stood empty for",
        "max_tokens": 4000, "temperature": 1.0, "seed": 1}


@pytest.fixture(scope="module")
def gateway(real_kernel):
    with GatewayProcess(real_kernel.cli_env()) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def operator(real_kernel):
    with real_kernel.client("gw-test-ps", caps=["ps", "embed"]) as c:
        yield c



def test_chat_completion_answers_with_usage(client):
    r = client.chat.completions.create(model=DEFAULT_MODEL, messages=HELLO, max_tokens=16, temperature=0)
    assert "Paris" in r.choices[0].message.content and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length") and r.model == DEFAULT_MODEL
    assert r.usage.completion_tokens >= 1 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.id.startswith("chatcmpl-") and r.created > 0


def test_streamed_chat_has_role_first_finish_reason_last_then_usage(client):
    chunks = list(client.chat.completions.create(model=DEFAULT_MODEL, messages=HELLO, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant" and "Paris" in text
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert len({c.id for c in chunks}) == 1


def test_streamed_and_whole_answers_agree_for_a_seed(client):
    args = dict(model=DEFAULT_MODEL, messages=HELLO, max_tokens=12, temperature=0.8, seed=7)
    whole = client.chat.completions.create(**args).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**args, stream=True))
    assert whole == streamed


def test_completion_continues_a_prompt_and_stops_at_a_stop_string(client):
    r = client.completions.create(model=DEFAULT_MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=["7"])
    assert r.choices[0].text.strip().startswith("5") and "7" not in r.choices[0].text
    assert r.choices[0].finish_reason == "stop" and r.object == "text_completion"


def test_embeddings_of_a_list_match_the_embed_syscall(client, operator):
    texts = ["a cat sat on the mat", "the stock market fell"]
    r = client.embeddings.create(model=DEFAULT_EMBED_MODEL, input=texts)       # the SDK asks for base64
    native = operator.embed(texts, model=DEFAULT_EMBED_MODEL)["vectors"]
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) == len(native[0])
    for got, want in zip(r.data, native):
        assert max(abs(a - b) for a, b in zip(got.embedding, want)) < 1e-6
    floats = client.embeddings.create(model=DEFAULT_EMBED_MODEL, input="one", encoding_format="float")
    assert len(floats.data) == 1 and floats.usage.prompt_tokens >= 1


def test_models_lists_the_loaded_and_the_available(client):
    ids = [m.id for m in client.models.list()]
    assert DEFAULT_MODEL in ids and DEFAULT_EMBED_MODEL in ids and len(ids) == len(set(ids))


def test_an_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert err.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("param, value", [("functions", [{"name": "f"}]), ("function_call", "auto"),
                                          ("store", True), ("frobnicate", 1)])
def test_a_parameter_llmos_does_not_do_is_400_naming_it(client, param, value):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=DEFAULT_MODEL, messages=HELLO, extra_body={param: value})
    assert err.value.body["param"] == param


def test_max_tokens_over_the_syscall_bound_is_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=DEFAULT_MODEL, messages=HELLO, max_completion_tokens=10**6)
    assert err.value.body["param"] == "max_completion_tokens"


def test_a_list_of_prompts_continues_each_in_its_own_choice(client):
    r = client.completions.create(model=DEFAULT_MODEL, prompt=["1, 2, 3, 4,", "a, b, c, d,"], max_tokens=4,
                                  temperature=0, echo=True)
    assert r.choices[0].text.startswith("1, 2, 3, 4, 5") and r.choices[1].text.startswith("a, b, c, d, e")


def test_the_developer_role_instructs_as_system_does(client):
    r = client.chat.completions.create(model=DEFAULT_MODEL, max_tokens=16, temperature=0, messages=[
        {"role": "developer", "content": "You answer in one short sentence."},
        {"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in r.choices[0].message.content


def test_responses_answer_with_the_real_model(client):
    r = client.responses.create(model=DEFAULT_MODEL, instructions="You answer in one short sentence.",
                                input="What is the capital of France?", max_output_tokens=16, temperature=0)
    assert "Paris" in r.output_text and r.usage.output_tokens >= 1


def test_malformed_json_is_400(gateway):
    r = httpx.post(gateway.url + "/v1/chat/completions", content=b'{"messages": [', timeout=30,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_a_20_mb_body_is_413(gateway):
    r = httpx.post(gateway.url + "/v1/chat/completions", content=b" " * (20 << 20), timeout=60)
    assert r.status_code == 413 and "4 MiB" in r.json()["error"]["message"]


def test_a_body_past_the_limit_without_content_length_is_413(gateway):
    def chunks():
        for _ in range(20):
            yield b" " * (1 << 20)
    r = httpx.post(gateway.url + "/v1/chat/completions", content=chunks(), timeout=60)
    assert r.status_code == 413


def test_health_live_and_ready(gateway):
    assert httpx.get(gateway.url + "/health/live", timeout=10).json() == {"status": "live"}
    r = httpx.get(gateway.url + "/health/ready", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "ready"


def test_32_concurrent_streaming_clients_all_complete(gateway):
    async def one(c: openai.AsyncOpenAI, i: int) -> tuple[str, str]:
        stream = await c.chat.completions.create(model=DEFAULT_MODEL, max_tokens=8, stream=True,
                                                 messages=[{"role": "user", "content": f"Count to {i}."}])
        parts, finish = [], None
        async for chunk in stream:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        return "".join(parts), finish

    async def run():
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="-", max_retries=0, timeout=300) as c:
            return await asyncio.gather(*(one(c, i) for i in range(32)))

    results = asyncio.run(run())
    assert len(results) == 32 and all(text and finish in ("stop", "length") for text, finish in results)


def test_a_client_leaving_mid_stream_cancels_its_kernel_request(gateway, operator):
    with httpx.stream("POST", gateway.url + "/v1/completions", json={**LONG, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = next(lines)
        in_flight = wait_until(lambda: served_requests(operator) == 1, timeout=10)
        assert in_flight, f"the request is not in flight: {first} then {list(itertools.islice(lines, 3))}"
    assert wait_until(lambda: served_requests(operator) == 0, timeout=1.0, interval=0.02)


def test_a_client_leaving_before_a_whole_answer_cancels_its_kernel_request(gateway, operator):
    leave_before_the_answer(gateway.url + "/v1/completions", LONG, operator)
