"""End to end on the embedded default model (SmolLM2-135M-Instruct), through a real kernel."""

import os
import subprocess
import sys

import msgpack
import pytest
import zmq

from harness import wait_until

pytestmark = pytest.mark.real_model


def test_the_default_model_answers_a_question_sensibly(real_kernel):
    with real_kernel.client("e2e") as c:
        r = c.infer(messages=[{"role": "user", "content": "What is the capital of France?"}],
                    max_tokens=32, temperature=0)
    assert "Paris" in r["text"]
    assert r["model"] == "smollm2-135m-instruct" and r["usage"]["completion_tokens"] > 0


def test_llmos_run_streams_an_answer_and_ps_sees_it(real_kernel):
    env = dict(os.environ, LLMOS_SOCKET=real_kernel.socket)
    with real_kernel.client("watcher") as c:
        run = subprocess.Popen([sys.executable, "-m", "llmos.userland.cli", "run", "--temperature", "0",
                                "What is the capital of France?"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        seen = set()

        def shown_or_done() -> bool:
            seen.update(p["name"] for p in c.ps())
            return "llmos-run" in seen or run.poll() is not None

        wait_until(shown_or_done, timeout=120)
        out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert "Paris" in out and "tokens/s" in err
    assert "llmos-run" in seen, "ps never showed the running program"


def test_a_raw_client_written_from_the_spec_streams_an_answer(real_kernel):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.connect(real_kernel.socket)
        sock.send(msgpack.packb({"v": 1, "id": 1, "call": "hello", "args": {"name": "raw"}}))
        sock.send(msgpack.packb({"v": 1, "id": 2, "call": "infer", "args": {
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 32, "temperature": 0.0, "stream": True}}))
        deltas, final = [], None
        while final is None:
            assert sock.poll(120_000)
            reply = msgpack.unpackb(sock.recv())
            if reply["id"] == 2 and reply.get("more"):
                deltas.append(reply["result"]["delta"])
            elif reply["id"] == 2:
                final = reply
        assert final["ok"] and "Paris" in final["result"]["text"]
        assert "".join(deltas) == final["result"]["text"] and len(deltas) > 1
    finally:
        sock.close(0)
        ctx.term()


def test_seeded_sampling_is_reproducible_on_the_real_model(real_kernel):
    with real_kernel.client("seeds") as c:
        kw = dict(messages=[{"role": "user", "content": "Write a short poem about the sea."}],
                  max_tokens=24, temperature=0.9, seed=42)
        assert c.infer(**kw)["text"] == c.infer(**kw)["text"]


def test_minilm_embeddings_put_similar_sentences_closer(real_kernel):
    with real_kernel.client("embedder") as c:
        a, b, d = c.embed(["How do I reset my password?", "I forgot my password, how can I change it?",
                           "The weather in Rome is sunny today."])["vectors"]
    dot = lambda x, y: sum(p * q for p, q in zip(x, y))
    assert dot(a, b) > dot(a, d) + 0.2


def test_a_fine_tune_of_the_default_model_learns_and_its_adapter_serves(real_kernel):
    examples = [{"prompt": f"Ticket {i}: which queue?", "completion": " zebrafish"} for i in range(4)]
    caps = ["tune", "ps", "infer", "models"]
    with real_kernel.client("tune-real", caps=caps) as c:
        job = c.tune(base="smollm2-135m-instruct", name="zebra", examples=examples, epochs=24, lr=0.004,
                     batch_size=4, max_seq_len=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])["job"]
        losses = []

        def done() -> bool:
            (mine,) = [j for j in c.jobs()["jobs"] if j["job"] == job]
            if mine["loss"] is not None:
                losses.append(mine["loss"])
            return mine["state"] in ("done", "failed", "cancelled")

        assert wait_until(done, timeout=600), c.jobs()
        assert [j["state"] for j in c.jobs()["jobs"] if j["job"] == job] == ["done"]
        tuned = c.infer(model="smollm2-135m-instruct:zebra", prompt="Ticket 7: which queue?", max_tokens=4,
                        temperature=0)
    assert losses[-1] < losses[0] / 2, losses
    assert tuned["model"] == "smollm2-135m-instruct:zebra" and "zebrafish" in tuned["text"], tuned
