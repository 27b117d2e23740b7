"""No computation blocks the driver loop past its heartbeat (issue 25, item 3, driver side): embed and
score run in slices, bounded in tokens and, while others wait, in time; between slices the loop
answers pings and steps its engines, and within a long forward of one slice it still takes in pings
(and an embed's lets the engines step). Specified on the driver loop in-process; the sizing itself
with an injected clock in test_slice_budget.py."""

from __future__ import annotations

import os
import threading
import time

import pytest
import zmq

from llmos.drivers import embedding as embedding_module
from llmos.drivers import scoring as scoring_module
from llmos.drivers import slices as slices_module
from llmos.drivers.host import DriverLoop
from llmos.drivers.slices import run_to_end
from llmos.drivers.torch_driver import TorchDriver
from llmos.kernel import registry
from llmos.specs import channel
from llmos.specs.channel import DriverMessage

from adapter_files import adapter_files, make_adapter

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


def test_slices_bounded_in_time_give_what_one_slice_gives(driver):
    """With a target time no work meets, every slice after the first is the least: a text tokenized
    alone, an embed's forward of one text, a score's of LEAST_TOKENS positions of one text (reading
    the keys and values of the positions before it from the chunks before)."""
    embed, score = big_call("embed", 7), big_call("score", 8)
    embed.input, score.texts = embed.input[:100], score.texts[:8]
    vectors, nll = driver.embed(embed).result["vectors"], driver.score(score).result["nll"]
    counts = []
    for call, msg in ((driver.embed_slices, embed), (driver.score_slices, score)):
        slices, count = call(msg, lambda: None, lambda: 1e-9), 0
        while True:
            try:
                next(slices)
                count += 1
            except StopIteration as end:
                counts.append(count)
                reply = end.value
                break
        if msg is embed:
            assert all(got == pytest.approx(want, abs=1e-5) for got, want in zip(reply.result["vectors"], vectors))
        else:
            assert reply.result["nll"] == pytest.approx(nll, abs=1e-3)
    rows = sum(len(driver.engines["tiny"].lm.tokenizer(t)["input_ids"]) - 1 for t in score.texts)
    assert counts[0] > len(embed.input) - embedding_module.SLICE_TEXTS
    assert counts[1] >= rows // scoring_module.LEAST_TOKENS


def test_a_score_in_chunks_reads_every_chunk_through_its_adapter(driver, tiny_llama, tmp_path):
    files = adapter_files(make_adapter(tiny_llama, tmp_path, "a", seed=3))
    assert isinstance(driver.load_adapter(channel.LoadAdapter("tiny", "chunks", files)), channel.AdapterLoaded)
    msg = channel.Score(9, "tiny", "chunks", big_call("score", 9).texts[:4])
    whole, base = driver.score(msg).result["nll"], driver.score(channel.Score(9, "tiny", "", msg.texts)).result["nll"]
    chunked = run_to_end(driver.score_slices(msg, lambda: None, lambda: 1e-9)).result["nll"]   # LEAST_TOKENS each
    assert chunked == pytest.approx(whole, abs=1e-3)
    assert all(abs(a - b) > 0.1 for a, b in zip(whole, base))       # the adapter changed what it read


class Stepping:
    """A driver whose calls pause once within their one slice, and whose engines have steps to run
    (each lasting step_s)."""

    def __init__(self, step_s: float = 0.0):
        self.log: list = []
        self.busy, self.step_s = True, step_s

    def has_work(self) -> bool:
        return self.busy

    def step(self, pause=None) -> list:
        self.log.append("step")
        time.sleep(self.step_s)
        return []

    def kv_usage(self):
        return None

    def unload_adapter(self, msg) -> None:
        pass

    def embed_slices(self, msg, pause, slice_s):
        self.log.append(("slice", slice_s()))
        pause()
        self.log.append("embed's layer")
        return channel.Result(msg.rid, {})
        yield

    def score_slices(self, msg, pause, slice_s):
        pause()
        self.log.append("score's layer")
        return channel.Result(msg.rid, {})
        yield


class Socket:
    def __init__(self):
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def get(self, option) -> int:
        return 0          # nothing to receive


def test_an_embeds_long_forward_lets_the_engines_step_and_a_scores_does_not():
    """An embedder is no engine's model, so an engine step may run inside its forward; a score's model
    is the engine's own (its adapter and hooks are on), so its pauses only take in messages."""
    driver = Stepping()
    loop = DriverLoop(Socket(), driver)
    loop.handle(channel.Embed(1, "bert", ["a"]))
    loop._advance_call()
    assert driver.log == [("slice", slices_module.MIN_SLICE_S), "step", "embed's layer"]
    driver.log.clear()
    loop.handle(channel.Score(2, "tiny", "", ["a"]))
    loop._advance_call()
    assert driver.log == ["score's layer"]


def test_a_calls_slices_last_about_as_long_as_the_engines_steps():
    """Turns of equal length: a stream beside the heaviest call waits about twice as long between two
    tokens as alone, on a tiny model or a big one, on a quiet machine or a loaded one."""
    driver = Stepping(step_s=0.02)
    loop = DriverLoop(Socket(), driver)
    for _ in range(8):
        loop._step()
    assert 0.02 <= loop._slice_s() < 0.1                      # the steps lasted 20 ms and more
    driver.busy = False
    assert loop._slice_s() == slices_module.ALONE_SLICE_S      # nobody waits: a newcomer waits at most this
    loop.handle(channel.Embed(1, "bert", ["a"]))
    assert loop._slice_s() == slices_module.SLICE_TARGET_S     # only another call waits: a turn each


def test_a_text_past_the_context_is_read_as_its_start(driver):
    """A 1 MiB text is cut before it is tokenized (the model reads only its first tokens anyway)."""
    long = driver.embed(channel.Embed(5, "bert", ["Paris is the capital of France " * 40_000])).result
    short = driver.embed(channel.Embed(6, "bert", ["Paris is the capital of France " * 60])).result
    assert long["vectors"] == short["vectors"]
