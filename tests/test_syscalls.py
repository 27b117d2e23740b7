"""Each syscall against a real kernel on the tiny model, including every errno path in the spec."""

import os
import signal
import threading
import time

import pytest

from harness import errno_of
from llmos.userland import LLMOSError


@pytest.fixture
def client(kernel, request):
    with kernel.client(request.node.name[:60]) as c:
        yield c


def test_hello_gives_a_pid_the_default_caps_and_the_timing_contract(client):
    assert client.pid >= 1
    assert {"infer", "mem", "ps"} <= set(client.info["caps"]) and "admin" not in client.info["caps"]
    assert client.info["abi"] == 1 and client.info["heartbeat_s"] > 0


def test_hello_twice_on_one_connection_is_ebusy(client):
    assert errno_of(client.call, "hello", name="again") == "EBUSY"


def test_hello_with_a_cap_that_is_not_grantable_is_eperm(kernel):
    with pytest.raises(LLMOSError) as info:
        kernel.client("greedy", caps=["infer", "root"])
    assert info.value.errno == "EPERM"


def test_a_call_without_its_capability_is_eperm(kernel):
    with kernel.client("infer-only", caps=["infer"]) as c:
        assert errno_of(c.memwrite, "r", "k", "v") == "EPERM"
        assert errno_of(c.ps) == "EPERM"
        assert c.infer(prompt="hi", max_tokens=2)["usage"]["completion_tokens"] <= 2


def test_ping_echoes_its_payload(client):
    assert client.ping({"x": [1, 2]})["payload"] == {"x": [1, 2]}


def test_ps_lists_the_caller_with_its_counters(kernel):
    before = time.monotonic()
    with kernel.client("counted") as client:
        client.infer(prompt="count me", max_tokens=3, temperature=0)
        time.sleep(0.2)
        me = next(p for p in client.ps() if p["pid"] == client.pid)
        lived = time.monotonic() - before
    assert me["name"] == "counted" and me["tokens"] == 3 and me["requests"] == 0
    assert 0.2 <= me["age_s"] <= lived, f"age {me['age_s']} s of a process that has lived 0.2 to {lived:.3f} s"


def test_kill_needs_admin_and_an_existing_pid(kernel, client):
    assert errno_of(client.kill, client.pid) == "EPERM"
    with kernel.client("admin", caps=["admin", "ps"]) as admin:
        assert errno_of(admin.kill, 999_999) == "ENOENT"
        with kernel.client("victim") as victim:
            admin.kill(victim.pid)
            assert victim.pid not in [p["pid"] for p in admin.ps()]


def test_sysinfo_works_before_hello(kernel):
    import msgpack
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.connect(kernel.socket)
        sock.send(msgpack.packb({"v": 1, "id": 7, "call": "sysinfo", "args": {}}))
        assert sock.poll(10_000)
        reply = msgpack.unpackb(sock.recv())
        assert reply["id"] == 7 and reply["ok"] and reply["result"]["abi"] == 1
        sock.send(msgpack.packb({"v": 1, "id": 8, "call": "ps"}))
        assert sock.poll(10_000)
        assert msgpack.unpackb(sock.recv())["error"]["errno"] == "EPERM"
    finally:
        sock.close(0)
        ctx.term()


def test_devices_reports_memory_accounting(client):
    (cpu,) = client.devices()
    assert cpu["name"] == "cpu" and cpu["driver"] == "up"
    assert cpu["total_bytes"] == cpu["used_bytes"] + cpu["free_bytes"]
    assert cpu["models_bytes"] > 0


def test_alloc_gpu_and_free_move_the_accounting(client):
    before = client.devices()[0]["reserved_bytes"]
    r = client.alloc_gpu(3 << 20, device="cpu")
    assert client.devices()[0]["reserved_bytes"] == before + (3 << 20)
    assert client.free(r["handle"])["bytes"] == 3 << 20
    assert client.devices()[0]["reserved_bytes"] == before


def test_alloc_gpu_errors(client):
    assert errno_of(client.alloc_gpu, 1 << 60) == "ENOMEM"
    assert errno_of(client.alloc_gpu, 1, device="cuda:7") == "ENOENT"
    assert errno_of(client.alloc_gpu, 0) == "EINVAL"
    assert errno_of(client.free, 424242) == "ENOENT"


def test_models_lists_the_loaded_model_and_the_registry(client, tiny_llama):
    info = client.models()
    assert any(m["name"] == tiny_llama and m["state"] == "ready" for m in info["loaded"])
    assert {"smollm2-135m-instruct", "minilm-l6-v2"} <= {a["name"] for a in info["available"]}


def test_load_model_shares_one_copy_and_counts_references(kernel, client, tiny_llama):
    r = client.load_model(tiny_llama)
    assert r["already_loaded"]
    with kernel.client("second") as other:
        other.load_model(tiny_llama)
        refs = next(m for m in client.models()["loaded"] if m["name"] == tiny_llama)["refs"]
        assert refs >= 3   # pinned at boot + two processes
        assert len([m for m in client.models()["loaded"] if m["name"] == tiny_llama]) == 1


def test_load_model_of_an_unknown_name_is_enoent(client):
    assert errno_of(client.load_model, "no-such-model") == "ENOENT"
    assert errno_of(client.load_model, "/nonexistent/model.gguf") == "ENOENT"


def test_unload_model_errors(client, tiny_llama):
    assert errno_of(client.unload_model, "not-loaded") == "ENOENT"
    assert errno_of(client.unload_model, tiny_llama, evict=True) == "EBUSY"   # pinned at boot
    assert client.unload_model(tiny_llama)["unloaded"] is False


def test_infer_with_a_prompt_returns_text_finish_reason_and_usage(client):
    r = client.infer(prompt="The quick brown fox", max_tokens=5, temperature=0)
    assert r["finish_reason"] in ("stop", "length")
    assert r["usage"]["prompt_tokens"] > 0 and 1 <= r["usage"]["completion_tokens"] <= 5


def test_infer_with_messages_uses_the_chat_template(client):
    r = client.infer(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                     max_tokens=4, temperature=0)
    assert r["usage"]["prompt_tokens"] > 5


def test_streamed_deltas_add_up_to_the_final_text(client):
    stream = client.stream(prompt="Paris is the capital", max_tokens=12, temperature=0)
    deltas = list(stream)
    assert "".join(deltas) == stream.result["text"]
    assert stream.result["finish_reason"] in ("stop", "length")


def test_the_same_seed_gives_the_same_text(client):
    a = client.infer(prompt="Numbers:", max_tokens=16, temperature=1.0, seed=1234)
    b = client.infer(prompt="Numbers:", max_tokens=16, temperature=1.0, seed=1234)
    assert a["text"] == b["text"]


def test_stop_strings_end_the_text_and_are_not_included(client):
    import re

    # A random-weight model emits arbitrary bytes; find a seed whose text has letters to stop on.
    for seed in range(40):
        full = client.infer(prompt="The", max_tokens=12, temperature=1.0, seed=seed)["text"]
        match = re.search("[A-Za-z]{2}", full[1:])
        if match:
            break
    assert match, "no seed gave text with two letters in a row"
    stop = match.group(0)
    cut = client.infer(prompt="The", max_tokens=12, temperature=1.0, seed=seed, stop=[stop])
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == full[:full.index(stop)]


def test_infer_argument_errors_are_einval(client):
    assert errno_of(client.infer) == "EINVAL"
    assert errno_of(client.infer, prompt="a", messages=[{"role": "user", "content": "b"}]) == "EINVAL"
    assert errno_of(client.infer, messages=[{"role": "wizard", "content": "b"}]) == "EINVAL"
    assert errno_of(client.infer, messages=[]) == "EINVAL"
    assert errno_of(client.infer, prompt="a", temperature=-1) == "EINVAL"
    assert errno_of(client.infer, prompt="a", top_p=1.5) == "EINVAL"
    assert errno_of(client.infer, prompt="a", stop=[""]) == "EINVAL"


def test_infer_with_a_prompt_longer_than_the_context_is_einval(client):
    assert errno_of(client.infer, prompt="word " * 5000, max_tokens=4) == "EINVAL"


def test_infer_on_an_unknown_model_is_enoent(client):
    assert errno_of(client.infer, prompt="a", model="no-such-model") == "ENOENT"


def test_infer_past_its_deadline_is_etimedout(client):
    driver = client.devices()[0]["os_pid"]
    os.kill(driver, signal.SIGSTOP)      # the request cannot finish: only its deadline can end it
    thaw = threading.Timer(5, os.kill, (driver, signal.SIGCONT))    # without deadlines, end the wait
    thaw.start()
    try:
        assert errno_of(client.infer, prompt="a", max_tokens=2, deadline=0.1) == "ETIMEDOUT"
    finally:
        thaw.cancel()
        os.kill(driver, signal.SIGCONT)


def test_cancel_ends_a_stream_with_ecanceled(client):
    stream = client.stream(prompt="Once upon a time", max_tokens=400, temperature=1.0, seed=1)
    it = iter(stream)
    next(it)
    assert client.cancel(stream.id)["cancelled"] is True
    with pytest.raises(LLMOSError) as info:
        for _ in it:
            pass
    assert info.value.errno == "ECANCELED"
    assert errno_of(client.cancel, stream.id) == "ENOENT"


async def cancel_after(stream, deltas: int) -> str:
    """Read `deltas` deltas, cancel, read to the end: 'ECANCELED' if the cancel ended the stream,
    'finished' if the stream had ended by itself before the cancel came (then the cancel is ENOENT)."""
    async for _ in stream:
        deltas -= 1
        if deltas == 0:
            break
    try:
        await stream.cancel()
    except LLMOSError as exc:
        assert exc.errno == "ENOENT", exc
        async for _ in stream:
            pass
        assert stream.result["finish_reason"] == "stop"
        return "finished"
    with pytest.raises(LLMOSError) as info:
        async for _ in stream:
            pass
    assert info.value.errno == "ECANCELED"
    return "ECANCELED"


def test_requests_cancelled_while_steps_run_lose_nothing_for_others(kernel):
    # The driver takes in submissions between the layers of a step and applies cancels after
    # it: forty streams, each cancelled after its first, second or third delta while a steady
    # request runs, must neither disturb the steady one's text nor lose a reply.
    import asyncio

    from llmos.userland import AsyncClient

    prompt = "Once upon a time there was a kernel that shared one machine. " * 4

    async def steady_alone():
        async with AsyncClient(kernel.socket, name="alone") as c:
            return await c.infer(prompt=prompt, max_tokens=120, temperature=1.0, seed=5)

    async def with_churn():
        async with AsyncClient(kernel.socket, name="steady") as steady, \
                AsyncClient(kernel.socket, name="churn") as churn:
            task = asyncio.create_task(steady.infer(prompt=prompt, max_tokens=120, temperature=1.0, seed=5))

            async def churn_one(i):
                s = await churn.stream(prompt="tok " * (1 + i % 9), max_tokens=300, temperature=1.0, seed=i)
                return await cancel_after(s, deltas=1 + i % 3)

            outcomes = await asyncio.gather(*(churn_one(i) for i in range(40)))
            return await task, outcomes

    alone = asyncio.run(steady_alone())
    result, outcomes = asyncio.run(with_churn())
    assert "ECANCELED" in outcomes     # a stream ends by itself before its cancel only at an EOS
    assert result["text"] == alone["text"] and result["usage"] == alone["usage"]


def test_embed_returns_normalized_vectors(client, tiny_bert):
    r = client.embed(["hello world", "goodbye"], model=tiny_bert)
    assert len(r["vectors"]) == 2 and r["dim"] == len(r["vectors"][0])
    assert abs(sum(x * x for x in r["vectors"][0]) - 1.0) < 1e-3


def test_embed_with_a_generate_model_is_einval(client, tiny_llama):
    assert errno_of(client.embed, "x", model=tiny_llama) == "EINVAL"
    assert errno_of(client.embed, []) == "EINVAL"


def test_too_many_requests_in_flight_is_eagain(kernel):
    import asyncio

    from llmos.userland import AsyncClient

    async def flood():
        async with AsyncClient(kernel.socket, name="flood") as c:
            streams = [await c.stream(prompt="x", max_tokens=400, temperature=1.0, seed=i) for i in range(66)]
            over = []
            for s in streams[64:]:
                try:
                    async for _ in s:
                        pass
                except LLMOSError as exc:
                    over.append(exc.errno)
            for s in streams[:64]:
                try:
                    await s.cancel()
                except LLMOSError:
                    pass   # already finished
            return over

    assert asyncio.run(flood()) == ["EAGAIN", "EAGAIN"]
