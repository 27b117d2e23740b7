"""No computation blocks the driver loop past its heartbeat (issue 25, item 3, driver side): embed and
score run in slices, between which the loop answers pings and steps its engines, and within a long
forward of one slice the loop still takes in pings (specified on the driver loop in-process)."""

from __future__ import annotations

import os
import threading
import time

import pytest
import zmq

from llmos.drivers import slices as slices_module
from llmos.drivers.host import DriverLoop
from llmos.drivers.torch_driver import TorchDriver
from llmos.specs import channel, registry
from llmos.specs.channel import DriverMessage

TEXTS = ["An operating system shares one machine among many programs.", "The quick brown fox", "Paris"]


@pytest.fixture(scope="module")
def driver(tiny_llama, tiny_bert) -> TorchDriver:
    d = TorchDriver("cpu", "float32")
    d.load(channel.Load("tiny", registry.resolve(tiny_llama).to_wire(), 1 << 22))
    d.load(channel.Load("bert", registry.resolve(tiny_bert).to_wire(), 0))
    return d


def canary(rid: int) -> channel.Submit:
    return channel.Submit(rid=rid, model="tiny", prompt="The quick brown fox", messages=None, max_tokens=24,
                          temperature=0.0, top_p=None, top_k=None, stop=[], seed=1)


def big_call(kind: str, rid: int) -> DriverMessage:
    if kind == "embed":
        return channel.Embed(rid, "bert", [f"{i} {TEXTS[i % 3]}" * (1 + i % 7) for i in range(1024)])
    return channel.Score(rid, "tiny", "", [f"{i} {TEXTS[i % 3]} " * 12 for i in range(64)])


def serve(driver: TorchDriver, messages: list[DriverMessage], until) -> list[DriverMessage]:
    """Queue `messages` for a driver loop on a real socket, then run it until until(sent) holds; what
    it sent, in order."""
    ctx = zmq.Context()
    kernel, sock = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    kernel.bind("inproc://driver")
    sock.setsockopt(zmq.IDENTITY, b"cpu")
    sock.connect("inproc://driver")
    loop = DriverLoop(sock, driver)
    loop.send(channel.Ping(0.0))          # the kernel learns the driver's routing id
    kernel.recv_multipart()
    for msg in messages:                  # all there before the loop looks: one receive takes them in
        kernel.send_multipart([b"cpu", channel.encode(msg)])
    thread = threading.Thread(target=loop.run, args=(os.getppid(),), daemon=True)
    thread.start()
    sent: list[DriverMessage] = []
    deadline = time.monotonic() + 120
    while not until(sent) and time.monotonic() < deadline:
        if kernel.poll(100):
            sent.append(channel.decode(kernel.recv_multipart()[1], DriverMessage))
    kernel.send_multipart([b"cpu", channel.encode(channel.Shutdown())])
    thread.join(30)
    kernel.close(0)
    sock.close(0)
    ctx.term()
    assert until(sent), sent
    return sent


def index(sent: list, kind: type, rid: int | None = None) -> int:
    for i, msg in enumerate(sent):
        if isinstance(msg, kind) and (rid is None or getattr(msg, "rid", None) == rid
                                      or any(e.rid == rid for e in getattr(msg, "events", ()))):
            return i
    raise AssertionError(f"no {kind.__name__} for {rid} in {[type(m).__name__ for m in sent]}")


@pytest.mark.parametrize("kind", ["embed", "score"])
def test_a_big_call_answers_pings_and_lets_generations_step_before_it_ends(driver, kind):
    """Before: the loop ran the whole call when it came, and only then answered the ping that came with
    it and stepped the canary's generation."""
    def done(sent):
        return any(isinstance(m, channel.Result) for m in sent) and any(
            isinstance(m, channel.Events) and any(e.rid == 1 and e.finish for e in m.events) for m in sent)

    sent = serve(driver, [canary(1), big_call(kind, 2), channel.Ping(1.0)], done)
    result = index(sent, channel.Result, 2)
    assert index(sent, channel.Pong) < result
    assert index(sent, channel.Events, 1) < result       # the canary had tokens while the call ran
    assert sum(isinstance(m, channel.Events) for m in sent[:result]) >= 2


@pytest.mark.parametrize("kind", ["embed", "score"])
def test_a_long_forward_of_one_slice_pauses_after_its_layers(driver, kind, monkeypatch):
    monkeypatch.setattr(slices_module, "PAUSE_EVERY_S", 0.0)
    pauses = []
    msg = big_call(kind, 3)
    call = driver.embed_slices if kind == "embed" else driver.score_slices
    slices = call(msg, lambda: pauses.append(1))
    count = 0
    while True:
        try:
            next(slices)
            count += 1
        except StopIteration as end:
            reply = end.value
            break
    assert isinstance(reply, channel.Result)
    assert count > 1 and len(pauses) >= count      # within its slices: after each layer of their forwards


def test_a_call_in_slices_gives_what_each_text_alone_gives(driver):
    msg = big_call("embed", 4)
    vectors = driver.embed(msg).result["vectors"]
    for i in range(0, 1024, 97):
        alone = driver.embed(channel.Embed(4, "bert", [msg.input[i]])).result["vectors"][0]
        assert alone == pytest.approx(vectors[i], abs=1e-5)
    msg = big_call("score", 4)
    nll = driver.score(msg).result["nll"]
    for i in range(0, 64, 9):
        assert driver.score(channel.Score(4, "tiny", "", [msg.texts[i]])).result["nll"][0] == pytest.approx(nll[i], abs=1e-3)


def test_a_text_past_the_context_is_read_as_its_start(driver):
    """A 1 MiB text is cut before it is tokenized (the model reads only its first tokens anyway)."""
    long = driver.embed(channel.Embed(5, "bert", ["Paris is the capital of France " * 40_000])).result
    short = driver.embed(channel.Embed(6, "bert", ["Paris is the capital of France " * 60])).result
    assert long["vectors"] == short["vectors"]
