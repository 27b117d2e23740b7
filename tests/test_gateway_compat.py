"""The rest of OpenAI's API through `llmos serve`, with the official `openai` package: the developer role,
echo, lists of prompts, embedding dimensions, one model by id, /v1/responses, and the gateway's /metrics.

A kernel of the file's own on the tiny model (its default) and no service host, so nobody else's
requests are in flight; the gateway runs as a real subprocess without API keys. The tiny model's
text is noise, so tests compare answers with each other (greedy decoding is deterministic), never
with expected words.
"""

from __future__ import annotations

import json
import math

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmos.specs.modelspec import DEFAULT_EMBED_MODEL
from llmos.userland.gateway.openai import MAX_PROMPTS
from llmos.userland.gateway.testing import GatewayProcess
from llmos.userland.testing import KernelProcess, wait_until

USER = {"role": "user", "content": "Say something."}


@pytest.fixture(scope="module")
def tiny_kernel(tmp_path_factory, tiny_llama):
    with KernelProcess(tmp_path_factory.mktemp("gw-compat"), model=tiny_llama, env={"LLMOS_NO_SERVICES": "1"}) as k:
        yield k


@pytest.fixture(scope="module")
def gateway(tiny_kernel):
    with GatewayProcess(tiny_kernel.cli_env()) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway, tiny_llama):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        c.model_name = tiny_llama       # the SDK asks for a model; the tiny one is the kernel's default
        yield c


def chat_text(client, messages, **kw) -> str:
    return client.chat.completions.create(model=client.model_name, messages=messages, max_tokens=8, temperature=0,
                                          **kw).choices[0].message.content


def test_the_developer_role_is_read_as_system(client):
    instructions = "You answer in French."
    as_developer = chat_text(client, [{"role": "developer", "content": instructions}, USER])
    as_system = chat_text(client, [{"role": "system", "content": instructions}, USER])
    without = chat_text(client, [USER])
    assert as_developer == as_system != without


def test_echo_puts_the_prompt_before_the_text(client):
    plain = client.completions.create(model=client.model_name, prompt="Once upon", max_tokens=5, temperature=0)
    echoed = client.completions.create(model=client.model_name, prompt="Once upon", max_tokens=5, temperature=0, echo=True)
    assert echoed.choices[0].text == "Once upon" + plain.choices[0].text


def test_echo_streamed_starts_with_the_prompt(client):
    chunks = list(client.completions.create(model=client.model_name, prompt="Once upon", max_tokens=5, temperature=0, echo=True, stream=True))
    whole = client.completions.create(model=client.model_name, prompt="Once upon", max_tokens=5, temperature=0, echo=True)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text


def test_a_list_of_prompts_has_one_choice_per_prompt_in_order(client):
    prompts = ["alpha beta", "gamma delta", "epsilon zeta"]
    r = client.completions.create(model=client.model_name, prompt=prompts, max_tokens=4, temperature=0, echo=True)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.text[:len(p)] for c, p in zip(r.choices, prompts)] == prompts
    alone = [client.completions.create(model=client.model_name, prompt=p, max_tokens=4, temperature=0).usage for p in prompts]
    assert r.usage.prompt_tokens == sum(u.prompt_tokens for u in alone)
    assert r.usage.completion_tokens == sum(u.completion_tokens for u in alone)


def test_a_list_of_prompts_streams_each_choice_under_its_index(client):
    prompts = ["alpha beta", "gamma delta"]
    chunks = list(client.completions.create(model=client.model_name, prompt=prompts, max_tokens=4, temperature=0, echo=True, stream=True,
                                            stream_options={"include_usage": True}))
    texts = {0: "", 1: ""}
    finished = {}
    for c in chunks[:-1]:
        texts[c.choices[0].index] += c.choices[0].text
        if c.choices[0].finish_reason:
            finished[c.choices[0].index] = c.choices[0].finish_reason
    whole = client.completions.create(model=client.model_name, prompt=prompts, max_tokens=4, temperature=0, echo=True)
    assert [texts[0], texts[1]] == [c.text for c in whole.choices]
    assert set(finished) == {0, 1} and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_token_arrays_are_prompts_and_bad_ones_are_400_naming_prompt(client):
    one = client.completions.create(model=client.model_name, prompt=[1, 2, 3], max_tokens=3, temperature=0)
    two = client.completions.create(model=client.model_name, prompt=[[1, 2, 3], [3, 4]], max_tokens=3, temperature=0)
    assert two.choices[0].text == one.choices[0].text and [c.index for c in two.choices] == [0, 1]
    for bad in ([1, "a"], [[1, 2], []], [10**9]):
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model=client.model_name, prompt=bad, max_tokens=3)
        assert err.value.body["param"] == "prompt", err.value.body
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=client.model_name, prompt=[1, 2, 3], max_tokens=3, echo=True)
    assert err.value.body["param"] == "echo"


def test_each_prompt_holds_one_of_the_keys_streams(tiny_kernel, tiny_llama):
    with GatewayProcess(tiny_kernel.cli_env(), extra=["--max-streams", "2"]) as gw, \
            openai.OpenAI(base_url=gw.url + "/v1", api_key="-", max_retries=0, timeout=60) as c:
        with pytest.raises(openai.RateLimitError):
            c.completions.create(model=tiny_llama, prompt=["a", "b", "c"], max_tokens=2)
        for _ in range(3):       # the slots taken before the refusal were given back, and each answer's too
            assert len(c.completions.create(model=tiny_llama, prompt=["a", "b"], max_tokens=2).choices) == 2


def test_a_refused_request_costs_the_kernel_no_cancel(client, tiny_kernel):
    """A stream the kernel ended with an errno has nothing to cancel: a cancel would be an ENOENT in its error
    counts (and on the dashboard) for every refused request."""
    with tiny_kernel.client("gw-compat-stats", caps=["ps"]) as c:
        def cancels() -> dict:
            return c.stats()["requests"]["by_syscall"].get("cancel", {"ok": 0, "errors": {}})

        before = cancels()
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="no-such-model", prompt=["a", "b"], max_tokens=2)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=[USER], stream=True)
        assert cancels() == before


def test_more_prompts_than_the_bound_is_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=client.model_name, prompt=["x"] * (MAX_PROMPTS + 1), max_tokens=1)
    assert err.value.body["param"] == "prompt" and str(MAX_PROMPTS) in err.value.body["message"]


def test_too_many_stop_strings_is_400_naming_stop(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=client.model_name, messages=[USER], max_tokens=3, stop=[str(i) for i in range(17)])
    assert err.value.body["param"] == "stop"


def test_dimensions_truncates_and_renormalizes(client):
    full = client.embeddings.create(model=DEFAULT_EMBED_MODEL, input="a cat on a mat").data[0].embedding
    short = client.embeddings.create(model=DEFAULT_EMBED_MODEL, input="a cat on a mat", dimensions=64).data[0].embedding
    norm = math.sqrt(sum(x * x for x in full[:64]))
    assert len(short) == 64 and abs(math.sqrt(sum(x * x for x in short)) - 1) < 1e-5
    assert max(abs(a - b / norm) for a, b in zip(short, full[:64])) < 1e-5


@pytest.mark.parametrize("dimensions", [0, -3, 385, 10**9])
def test_dimensions_past_the_model_or_below_1_is_400(client, dimensions):
    with pytest.raises(openai.BadRequestError) as err:         # minilm-l6-v2 has 384
        client.embeddings.create(model=DEFAULT_EMBED_MODEL, input="x", dimensions=dimensions)
    assert err.value.body["param"] == "dimensions" and "unknown" not in err.value.body["message"]


def test_one_model_by_id_carries_its_context_length_and_owner(client, tiny_llama):
    m = client.models.retrieve(tiny_llama)
    assert m.id == tiny_llama and m.owned_by == "llmos" and m.context_length == 512   # the tiny model's config
    listed = {x.id: x for x in client.models.list()}
    assert listed[tiny_llama].context_length == 512


def test_an_unknown_model_id_is_404_in_openais_shape(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"


def test_streamed_chunks_name_the_model_used_when_the_request_named_none(gateway, tiny_llama):
    body = {"messages": [USER], "max_tokens": 4, "stream": True}         # the SDK always names one
    r = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=60)
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert len(chunks) >= 2 and {c["model"] for c in chunks} == {tiny_llama}


def test_responses_answer_as_chat_does_with_instructions_as_system(client):
    r = client.responses.create(model=client.model_name, input="Say something.", instructions="Be brief.", max_output_tokens=8, temperature=0)
    same = chat_text(client, [{"role": "system", "content": "Be brief."}, USER])
    assert r.output_text == same and r.output[0].content[0].text == same
    assert r.status in ("completed", "incomplete") and r.usage.output_tokens >= 1 and r.id.startswith("resp_")


def test_responses_take_a_message_list(client):
    r = client.responses.create(model=client.model_name, input=[{"role": "developer", "content": "Be brief."},
                                       {"role": "user", "content": [{"type": "input_text", "text": "Say something."}]}],
                                max_output_tokens=8, temperature=0)
    assert r.output_text == chat_text(client, [{"role": "system", "content": "Be brief."}, USER])


def test_responses_stream_openais_events(client):
    events = list(client.responses.create(model=client.model_name, input="Say something.", max_output_tokens=8, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in kinds
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text == chat_text(client, [USER])
    assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))


@pytest.mark.parametrize("extra, param", [({"store": True}, "store"), ({"previous_response_id": "resp_1"},
                                                                        "previous_response_id"),
                                          ({"input": [{"type": "function_call_output"}]}, "input[0]"),
                                          ({"metadata": {str(i): "v" for i in range(17)}}, "metadata")])
def test_what_responses_cannot_do_is_400_naming_it(client, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(**{"model": client.model_name, "input": "hi", **extra})
    assert err.value.body["param"] == param


def metrics(gateway) -> dict:
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    return {f.name: f for f in text_string_to_metric_families(text)}


def requests_counted(families, **labels) -> float:
    return sum(s.value for s in families["llmos_gateway_requests"].samples
               if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_count_requests_by_route_template_never_by_raw_path(gateway):
    before = metrics(gateway)
    for i in range(5):
        assert httpx.get(f"{gateway.url}/v1/models/nope-{i}", timeout=10).status_code == 404
        assert httpx.get(f"{gateway.url}/no/such/path/{i}", timeout=10).status_code == 404
    after = metrics(gateway)
    route = "/v1/models/{model_id:path}"
    assert requests_counted(after, route=route, status="404") - requests_counted(before, route=route, status="404") == 5
    assert requests_counted(after, route="(unmatched)") - requests_counted(before, route="(unmatched)") == 5
    routes = {s.labels["route"] for s in after["llmos_gateway_requests"].samples}
    assert not any("nope" in r or "/no/such" in r for r in routes)
    latency = after["llmos_gateway_request_duration_seconds"]
    assert any(s.name.endswith("_count") and s.labels["route"] == route and s.value >= 5 for s in latency.samples)


def test_metrics_count_open_streams(gateway):
    def open_streams() -> float:
        return metrics(gateway)["llmos_gateway_open_streams"].samples[0].value

    body = {"prompt": "Chapter 1\n\n", "max_tokens": 400, "temperature": 0, "stream": True}   # no EOS soon
    with httpx.stream("POST", gateway.url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()        # held: a generator dropped would close the response
        first = next(lines)
        assert open_streams() == 1, first
    assert wait_until(lambda: open_streams() == 0, timeout=5)
