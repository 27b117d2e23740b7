"""Ollama's API on `llmos serve`, through the official `ollama` Python client (and httpx for what it never sends).

A kernel of the file's own on the tiny model (its default) and no service host; the gateway runs
as a real subprocess without API keys (keyed mode: test_gateway_keys.py). The tiny model's text
is noise, so answers are compared with each other (greedy decoding is deterministic).
"""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

from harness import leave_before_the_answer, served_requests
from llmos.specs.protocol import KERNEL_VERSION
from llmos.specs.modelspec import DEFAULT_EMBED_MODEL
from llmos.userland.gateway.testing import GatewayProcess
from llmos.userland.testing import KernelProcess, wait_until

HI = [{"role": "user", "content": "Say something."}]
GREEDY = {"temperature": 0, "num_predict": 6}


@pytest.fixture(scope="module")
def tiny_kernel(tmp_path_factory, tiny_llama):
    with KernelProcess(tmp_path_factory.mktemp("gw-ollama"), model=tiny_llama, env={"LLMOS_NO_SERVICES": "1"}) as k:
        yield k


@pytest.fixture(scope="module")
def gateway(tiny_kernel):
    with GatewayProcess(tiny_kernel.cli_env()) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway):
    return ollama.Client(host=gateway.url, timeout=120)


@pytest.fixture(scope="module")
def operator(tiny_kernel):
    with tiny_kernel.client("ollama-test-ps", caps=["ps"]) as c:
        yield c


def test_chat_answers_with_ollamas_done_fields(client, tiny_llama):
    r = client.chat(model=tiny_llama, messages=HI, options=GREEDY)
    assert r.done and r.done_reason in ("stop", "length") and r.message.role == "assistant" and r.model == tiny_llama
    assert r.eval_count == 6 or r.done_reason == "stop"
    assert r.prompt_eval_count > 0 and r.total_duration >= r.prompt_eval_duration + r.eval_duration > 0


def test_chat_streams_by_default_and_agrees_with_the_whole_answer(client, tiny_llama, gateway):
    parts = list(client.chat(model=tiny_llama, messages=HI, options=GREEDY, stream=True))
    whole = client.chat(model=tiny_llama, messages=HI, options=GREEDY)
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count
    raw = httpx.post(gateway.url + "/api/chat", json={"model": tiny_llama, "messages": HI, "options": GREEDY}, timeout=60)
    assert raw.headers["content-type"].startswith("application/x-ndjson")     # no `stream` at all: streamed
    assert json.loads(raw.text.splitlines()[-1])["done"] is True


def test_generate_applies_the_chat_template_unless_raw(client, tiny_llama):
    templated = client.generate(model=tiny_llama, prompt="Say something.", options=GREEDY)
    chat = client.chat(model=tiny_llama, messages=HI, options=GREEDY)
    raw = client.generate(model=tiny_llama, prompt="Say something.", raw=True, options=GREEDY)
    assert templated.response == chat.message.content and raw.prompt_eval_count < templated.prompt_eval_count
    streamed = list(client.generate(model=tiny_llama, prompt="Say something.", options=GREEDY, stream=True))
    assert "".join(p.response for p in streamed) == templated.response and streamed[-1].done


def test_generate_takes_a_system_message(client, tiny_llama):
    with_system = client.generate(model=tiny_llama, prompt="Say something.", system="Be brief.", options=GREEDY)
    as_chat = client.chat(model=tiny_llama, options=GREEDY,
                          messages=[{"role": "system", "content": "Be brief."}, *HI])
    assert with_system.response == as_chat.message.content


def test_options_reach_infer(client, tiny_llama):
    short = client.generate(model=tiny_llama, prompt="Once", raw=True, options={"num_predict": 2, "temperature": 0})
    assert short.eval_count == 2 and short.done_reason == "length"
    sampled = [client.generate(model=tiny_llama, prompt="Once", raw=True,
                               options={"num_predict": 8, "temperature": 1.5, "top_p": 1, "top_k": 0, "seed": seed})
               for seed in (1, 1, 2)]
    assert sampled[0].response == sampled[1].response != sampled[2].response


def test_a_stop_option_ends_the_text_before_it(client, tiny_llama):
    free = client.generate(model=tiny_llama, prompt="Once", raw=True, options={"num_predict": 12, "temperature": 0})
    cut = free.response[3:6]                 # a piece of what the model says: it stops before it
    stopped = client.generate(model=tiny_llama, prompt="Once", raw=True,
                              options={"num_predict": 12, "temperature": 0, "stop": [cut]})
    assert stopped.done_reason == "stop" and free.response.startswith(stopped.response)
    assert cut not in stopped.response


@pytest.mark.parametrize("options, named", [({"num_ctx": 4096}, "num_ctx"), ({"temperature": 9}, "temperature"),
                                            ({"num_predict": 0}, "num_predict"), ({"repeat_penalty": 1.1},
                                                                                  "repeat_penalty")])
def test_an_option_llmos_does_not_do_is_400_naming_it(client, tiny_llama, options, named):
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model=tiny_llama, messages=HI, options=options)
    assert err.value.status_code == 400 and named in err.value.error


def test_images_and_bad_formats_are_400(client, tiny_llama, gateway):
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model=tiny_llama, messages=[{"role": "user", "content": "hi", "images": ["aGk="]}])
    assert err.value.status_code == 400 and "images" in err.value.error
    r = httpx.post(gateway.url + "/api/generate", json={"model": tiny_llama, "prompt": "hi", "format": "yaml"})
    assert r.status_code == 400 and "format" in r.json()["error"]


SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0,
          "maximum": 9}}, "required": ["ok", "n"], "additionalProperties": False}


@pytest.mark.parametrize("stream", [False, True])
def test_a_format_schema_is_decoded_under_it(client, tiny_llama, stream):
    answer = client.chat(model=tiny_llama, messages=HI, format=SCHEMA, stream=stream,
                         options={"temperature": 0.8, "seed": 3, "num_predict": 60})
    text = "".join(part.message.content for part in answer) if stream else answer.message.content
    value = json.loads(text)
    assert set(value) == {"ok", "n"} and isinstance(value["ok"], bool) and 0 <= value["n"] <= 9


def test_a_tool_loop_and_its_tools_reach_the_prompt(client, tiny_llama, gateway):
    """Ollama's chat lets the model choose (the tiny model does not call), so what is checked is the way in:
    the tools and the earlier call, with its arguments as an object, are rendered into the prompt."""
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}}
    loop = [{"role": "user", "content": "time?"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_time",
                                                                                "arguments": {"zone": "UTC"}}}]},
            {"role": "tool", "content": "12:00"}]
    answer = client.chat(model=tiny_llama, messages=loop, tools=[tool], options=GREEDY)
    bare = client.chat(model=tiny_llama, messages=[loop[0], {"role": "assistant", "content": "ok"}, loop[2]],
                       options=GREEDY)
    no_tools = client.chat(model=tiny_llama, messages=loop, options=GREEDY)
    assert answer.prompt_eval_count > no_tools.prompt_eval_count > bare.prompt_eval_count


def test_an_unknown_model_is_404_in_ollamas_shape(client, gateway):
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="no-such-model", messages=HI)
    assert err.value.status_code == 404
    r = httpx.post(gateway.url + "/api/generate", json={"model": "no-such-model", "prompt": "hi"}, timeout=30)
    assert r.status_code == 404 and set(r.json()) == {"error"}


def test_embed_matches_the_embed_syscall(client, operator, tiny_kernel):
    r = client.embed(model=DEFAULT_EMBED_MODEL, input=["a cat", "the stock market"])
    with tiny_kernel.client("ollama-embed", caps=["embed"]) as c:
        native = c.embed(["a cat", "the stock market"], model=DEFAULT_EMBED_MODEL)["vectors"]
    assert len(r.embeddings) == 2 and r.model == DEFAULT_EMBED_MODEL and r.prompt_eval_count > 0
    for got, want in zip(r.embeddings, native):
        assert max(abs(a - b) for a, b in zip(got, want)) < 1e-6
    legacy = client.embeddings(model=DEFAULT_EMBED_MODEL, prompt="a cat")
    assert max(abs(a - b) for a, b in zip(legacy.embedding, native[0])) < 1e-6


def test_tags_list_every_model_once(client, tiny_llama):
    names = [m.model for m in client.list().models]
    assert tiny_llama in names and DEFAULT_EMBED_MODEL in names and len(names) == len(set(names))


def test_ps_lists_the_loaded_models_with_their_context(client, tiny_llama):
    loaded = {m.model: m for m in client.ps().models}
    assert loaded[tiny_llama].context_length == 512 and loaded[tiny_llama].size > 0


def test_show_describes_a_model_and_404s_an_unknown_one(client, tiny_llama):
    shown = client.show(tiny_llama)
    assert shown.capabilities == ["completion"] and shown.modelinfo["llmos.context_length"] == 512
    with pytest.raises(ollama.ResponseError) as err:
        client.show("no-such-model")
    assert err.value.status_code == 404


def test_version(gateway):
    assert httpx.get(gateway.url + "/api/version", timeout=10).json() == {"version": KERNEL_VERSION}



def test_a_client_leaving_mid_stream_cancels_its_kernel_request(gateway, operator, tiny_llama):
    body = {"model": tiny_llama, "prompt": "Chapter 1", "raw": True, "options": {"num_predict": 400, "temperature": 0}}
    with httpx.stream("POST", gateway.url + "/api/generate", json=body, timeout=60) as r:
        lines = r.iter_lines()        # held: a generator dropped would close the response
        assert json.loads(next(lines))["done"] is False
        assert wait_until(lambda: served_requests(operator) == 1, timeout=10)
    assert wait_until(lambda: served_requests(operator) == 0, timeout=1.0, interval=0.02)


def test_a_client_leaving_before_a_whole_answer_cancels_its_kernel_request(gateway, operator, tiny_llama):
    body = {"model": tiny_llama, "prompt": "Chapter 1", "raw": True, "stream": False,
            "options": {"num_predict": 400, "temperature": 0}}
    leave_before_the_answer(gateway.url + "/api/generate", body, operator)
