"""The CPU driver's llama.cpp backend (drivers/llamacpp_runner.py) on the default model's own GGUF.

Runs where llama-cpp-python is installed (the `llamacpp` extra, built from source; CI has none and
skips the file). The engine's features are its own on either runner, so these tests check what the
runner adds: logits as llama.cpp computes them however a prompt is cut or reused, slots reused only
within a principal and within their bound, the engine's greedy text equal to llama.cpp's own, the
driver choosing the backend, and a kernel serving chat through it.
"""

from __future__ import annotations

import json
import math
import os

import jsonschema
import pytest
import torch

pytest.importorskip("llama_cpp")

from harness import run_to_idle as run  # noqa: E402
from llmos.drivers import llamacpp_runner  # noqa: E402
from llmos.drivers.engine import Engine, GenRequest  # noqa: E402
from llmos.drivers.llamacpp_runner import LlamaCppRunner, LlamaCppUnavailable, use_llamacpp  # noqa: E402
from llmos.drivers.loader import encode_prompt, load  # noqa: E402
from llmos.drivers.sequence import Chunk  # noqa: E402
from llmos.kernel import registry  # noqa: E402
from llmos.userland.testing import KernelProcess  # noqa: E402

MODEL = "smollm2-135m-instruct"
pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def gguf() -> str:
    spec = registry.resolve(MODEL)
    return os.path.join(spec.path, spec.gguf_file)


@pytest.fixture(scope="module")
def lm():
    return load(registry.resolve(MODEL), "cpu", "auto")


def runner(gguf, kept_tokens=1024, max_seqs=8) -> LlamaCppRunner:
    return LlamaCppRunner(gguf, n_tokens=4096, max_seqs=max_seqs, n_batch=64, kept_tokens=kept_tokens)


PROMPT = list(range(1000, 1100))     # 100 token ids: two llama_decode calls at n_batch 64


def same_prediction(a: torch.Tensor, b: torch.Tensor) -> bool:
    """llama.cpp's logits move a little with how a batch is cut (one token runs other kernels than
    many; its cache is float16): the same choice, and probabilities within 5 points (2 were seen)."""
    return int(a.argmax()) == int(b.argmax()) and float((a.softmax(-1) - b.softmax(-1)).abs().max()) < 0.05


def last_logits(r: LlamaCppRunner, seq: int, tokens: list[int], cut: int | None = None, salt: str = "") -> torch.Tensor:
    if cut is None:
        return r.forward([Chunk(seq, tokens, 0, [], True, salt)])[0]
    r.forward([Chunk(seq, tokens[:cut], 0, [], False, salt)])
    return r.forward([Chunk(seq, tokens[cut:], cut, [], True, salt)])[0]


def test_a_prompt_cut_in_chunks_or_pieces_gives_the_logits_it_gives_whole(gguf):
    r = runner(gguf, kept_tokens=0)
    whole = last_logits(r, 1, PROMPT)                 # 100 tokens: cut in two pieces of n_batch
    chunked = last_logits(r, 2, PROMPT, cut=37)       # two chunks, as the scheduler cuts a long prompt
    assert whole.shape == (r.vocab_size,) and whole.isfinite().all()
    assert same_prediction(whole, chunked)


def test_an_ended_sequence_slot_serves_the_next_that_begins_alike_within_its_principal_only(gguf):
    r = runner(gguf)
    fresh = last_logits(r, 1, PROMPT + [5, 6, 7], salt="alice")
    r.release(1)
    assert r.reused_tokens == 0
    reused = last_logits(r, 2, PROMPT + [5, 6, 7], salt="alice")     # all but the last token were kept
    assert r.reused_tokens == len(PROMPT) + 2
    assert same_prediction(fresh, reused)
    r.release(2)
    other = last_logits(r, 3, PROMPT + [5, 6, 7], salt="bob")          # another principal computes it all
    assert r.reused_tokens == len(PROMPT) + 2
    assert same_prediction(fresh, other)
    r.release(3)
    last_logits(r, 4, PROMPT[:50] + [9, 9], salt="alice")             # a shorter common beginning
    assert r.reused_tokens == len(PROMPT) + 2 + 50


def test_idle_slots_keep_no_more_tokens_than_their_bound(gguf):
    r = runner(gguf, kept_tokens=250, max_seqs=8)
    for seq in range(6):
        last_logits(r, seq, [2000 + seq] + PROMPT)       # 101 tokens each, none alike at the start
    for seq in range(6):
        r.release(seq)
        assert sum(len(s.tokens) for s in r.idle.values()) <= 250
    assert sum(1 for s in r.idle.values() if s.tokens) == 2         # the newest two stayed
    assert len(r.idle) == 8 and not r.active


def test_idle_slots_keep_at_most_a_quarter_of_what_runs_beyond_the_floor(gguf):
    """A kept token costs every running sequence's step (llama.cpp's attention spans the whole cache)."""
    from llmos.drivers.llamacpp_runner import KEPT_FLOOR

    r = LlamaCppRunner(gguf, n_tokens=8192, max_seqs=16, n_batch=256, kept_tokens=4096)
    for seq in range(12):
        last_logits(r, seq, [3000 + seq] + PROMPT)       # 101 tokens each
    for seq in range(8):                                 # 4 run on, 404 tokens: the floor rules
        r.release(seq)
        assert sum(len(s.tokens) for s in r.idle.values()) <= max(KEPT_FLOOR, sum(len(s.tokens) for s in r.active.values()) // 4)
    assert 0 < sum(len(s.tokens) for s in r.idle.values()) <= KEPT_FLOOR
    for seq in range(8, 12):                             # nothing runs: the floor still keeps the newest
        r.release(seq)
    assert sum(len(s.tokens) for s in r.idle.values()) == 5 * 101 <= KEPT_FLOOR
    r.close()


def laned(gguf, streams=4, stream_tokens=256) -> LlamaCppRunner:
    return LlamaCppRunner(gguf, n_tokens=4096, max_seqs=8, n_batch=64, kept_tokens=512, streams=streams,
                          stream_tokens=stream_tokens)


def test_a_sequence_that_fits_a_stream_runs_in_one_and_computes_what_the_unified_cache_does(gguf):
    r, plain = laned(gguf), runner(gguf, kept_tokens=0)
    fits, long = [3000] + PROMPT, [3001] + PROMPT          # 101 tokens each; upto says how far each may go
    out = r.forward([Chunk(1, fits, 0, [], True, upto=256), Chunk(2, long, 0, [], True, upto=257),
                     Chunk(3, fits, 0, [], True)])          # no upto said: the unified lane, where anything fits
    assert [r.active[s].lane.name for s in (1, 2, 3)] == ["streams", "unified", "unified"]
    assert out.shape == (3, r.vocab_size)                   # rows in the chunks' order, whichever lane ran them
    assert same_prediction(out[0], last_logits(plain, 1, fits)) and same_prediction(out[0], out[2])
    assert same_prediction(out[1], last_logits(plain, 2, long))
    step = r.forward([Chunk(1, [7], 101, [], True, upto=256), Chunk(2, [7], 101, [], True, upto=257)])
    assert same_prediction(step[0], last_logits(plain, 10, fits + [7]))        # a decode step in its stream too


def test_a_full_streams_lane_sends_the_next_sequence_to_the_unified_one_and_a_stream_is_never_outgrown(gguf):
    r = laned(gguf, streams=4)
    r.forward([Chunk(s, [4000 + s] + PROMPT[:20], 0, [], True, upto=200) for s in range(5)])
    assert [r.active[s].lane.name for s in range(5)] == ["streams"] * 4 + ["unified"]
    r.release(0)
    r.forward([Chunk(9, [4100] + PROMPT[:20], 0, [], True, upto=200)])
    assert r.active[9].lane.name == "streams"                # a stream came free
    with pytest.raises(RuntimeError, match="outgrows its 256-token streams slot"):
        r.forward([Chunk(1, PROMPT[:60] * 4, 21, [], True, upto=200)])   # the engine promised upto=200


def test_an_ended_sequence_s_stream_serves_the_next_that_begins_alike_and_keeps_its_tokens(gguf):
    r = laned(gguf)
    fresh = r.forward([Chunk(1, PROMPT + [5, 6], 0, [], True, "alice", upto=200)])[0]
    r.release(1)
    r.forward([Chunk(2, [3] * 150, 0, [], True, "alice", upto=1000)])       # the unified lane: its kept bound
    r.release(2)
    again = r.forward([Chunk(3, PROMPT + [5, 6], 0, [], True, "alice", upto=200)])[0]
    assert r.reused_tokens == len(PROMPT) + 1 and r.active[3].lane.name == "streams"
    assert same_prediction(fresh, again)


def test_an_engine_on_llama_cpp_reports_its_streams_and_runs_a_request_in_one(lm, gguf):
    per_token = 23040
    engine = Engine(lm, 64 << 20, max_batch_tokens=256, gguf_path=gguf)
    streams = engine.runner.streams
    assert streams is not None and len(streams.idle) == streams.n_seq >= 4
    assert engine.kv_bytes == (64 << 20) + streams.n_seq * streams.seq_tokens * per_token
    prompt = chat_ids(lm, "Name three colours.")
    engine.add(greedy(1, prompt, 16))
    engine.step()
    assert engine.runner.active[1].lane is streams          # prompt and 16 tokens fit a stream
    run(engine, [])
    engine.add(greedy(2, prompt, streams.seq_tokens))       # it could outgrow one: the unified lane
    engine.step()
    assert engine.runner.active[2].lane is engine.runner.unified


def test_a_sequence_recomputed_from_an_earlier_position_forgets_what_followed(gguf):
    r = runner(gguf, kept_tokens=0)
    a = last_logits(r, 1, PROMPT, cut=60)
    r.forward([Chunk(1, [7, 7, 7], len(PROMPT), [], True)])
    again = r.forward([Chunk(1, PROMPT[60:], 60, [], True)])[0]    # back to position 60, as after a fault
    assert len(r.active[1].tokens) == len(PROMPT)
    assert same_prediction(a, again)
    with pytest.raises(RuntimeError, match="resumes at position"):
        r.forward([Chunk(1, [1], len(PROMPT) + 5, [], True)])


def greedy_by_hand(r: LlamaCppRunner, prompt: list[int], n: int) -> list[int]:
    out, logits = [], last_logits(r, 99, prompt)
    for i in range(n):
        out.append(int(logits.argmax()))
        logits = r.forward([Chunk(99, [out[-1]], len(prompt) + i, [], True)])[0]
    return out


def chat_ids(lm, text: str) -> list[int]:
    return encode_prompt(lm, None, [{"role": "user", "content": text}])


def greedy(rid: int, ids: list[int], n: int = 24, **kw) -> GenRequest:
    return GenRequest(rid, ids, n, 0.0, 1.0, 0, [], 1, ignore_eos=True, **kw)


def test_the_engine_on_llama_cpp_writes_llama_cpp_s_own_greedy_tokens(lm, gguf):
    """Alone, the engine's greedy tokens are the ones llama.cpp's logits give step by step. (In company
    they may differ: llama.cpp's numbers move with how many tokens share a call, as bf16 torch's do.)"""
    prompt = chat_ids(lm, "What is the capital of France?")
    want = greedy_by_hand(runner(gguf, kept_tokens=0), prompt, 24)
    engine = Engine(lm, 64 << 20, max_batch_tokens=256, gguf_path=gguf)
    assert engine.backend == "llama.cpp" and engine.stats()["prefix_cache"] is True
    assert run(engine, [greedy(1, prompt)])[1]["ids"] == want


def test_a_crowd_in_a_small_cache_is_preempted_recomputed_and_finishes(lm, gguf):
    prompts = [chat_ids(lm, f"{q} ({n})") for q in ("What is the capital of France?", "Name three colours.",
                                                    "Write a haiku about rain.", "What is 2 + 2?") for n in (1, 2)]
    per_block = 16 * 23040          # SmolLM2-135M: 30 layers x 3 kv heads x 64 x 2 x fp16, 16 tokens a block
    tight = Engine(lm, 40 * per_block, max_batch_tokens=64, gguf_path=gguf)    # 32 blocks run (8 x 80 need 40), 8 kept
    out = run(tight, [greedy(i + 1, p, 40) for i, p in enumerate(prompts)])
    assert tight.num_preemptions > 0
    assert all(r["finish"] == "length" and len(r["ids"]) == 40 for r in out.values()), out
    assert tight.stats()["prefix_reused_tokens"] > 0           # a recompute started from its kept slot
    assert not tight.runner.active and len(tight.runner.idle) == tight.runner.max_seqs   # every slot came back


def test_a_json_schema_constraint_holds_on_llama_cpp(lm, gguf):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    engine = Engine(lm, 64 << 20, gguf_path=gguf)
    ids = chat_ids(lm, "Give the largest city of Japan and its population as JSON.")
    out = run(engine, [GenRequest(i, ids, 96, 0.8, 0.95, 40, [], i, constraint={"json_schema": json.dumps(schema)})
                       for i in range(1, 5)])
    for r in out.values():
        assert r["finish"] == "stop", r
        jsonschema.validate(json.loads(r["text"]), schema)


def test_the_backend_is_the_operator_s_choice(gguf, monkeypatch):
    monkeypatch.setenv("LLMOS_CPU_BACKEND", "auto")
    assert use_llamacpp(gguf, "cpu") and not use_llamacpp(gguf, "cuda") and not use_llamacpp(None, "cpu")
    monkeypatch.setenv("LLMOS_CPU_BACKEND", "torch")
    assert not use_llamacpp(gguf, "cpu")
    monkeypatch.setenv("LLMOS_CPU_BACKEND", "llama")
    with pytest.raises(ValueError, match="give one of auto, torch, llamacpp"):
        use_llamacpp(gguf, "cpu")
    monkeypatch.setattr(llamacpp_runner, "available", lambda: False)
    monkeypatch.setenv("LLMOS_CPU_BACKEND", "auto")
    assert not use_llamacpp(gguf, "cpu")                       # auto falls back to torch
    monkeypatch.setenv("LLMOS_CPU_BACKEND", "llamacpp")
    with pytest.raises(LlamaCppUnavailable, match="pip install"):
        use_llamacpp(gguf, "cpu")                              # asked for, it is a load error, not a silent torch


@pytest.mark.timeout(300)
def test_a_kernel_serves_chat_on_llama_cpp_and_says_so(tmp_path):
    with KernelProcess(tmp_path, model=MODEL, env={"LLMOS_CPU_BACKEND": "llamacpp"}) as k:
        with k.client("chat") as c:
            [m] = [m for m in c.models()["loaded"] if m["name"] == MODEL]
            assert m["backend"] == "llama.cpp"
            messages = [{"role": "user", "content": "What is the capital of France? One word."}]
            stream = c.stream(messages=messages, model=MODEL, max_tokens=24, temperature=0.0)
            text = "".join(stream)
            assert text.strip() and stream.result["text"] == text
            assert stream.result["usage"]["completion_tokens"] >= 1
            again = c.infer(messages=messages, model=MODEL, max_tokens=24, temperature=0.0)
            assert again["text"].strip() and again["usage"] == stream.result["usage"] | again["usage"]
            with pytest.raises(Exception, match="EINVAL"):     # the kernel's checks are the same on either backend
                c.infer(messages=messages, model=MODEL, max_tokens=24, temperature=-1.0)


TORCH_FROM = 9


def test_a_crowd_moves_the_model_to_torch_and_the_next_lone_request_back_to_llama_cpp(gguf, monkeypatch):
    from dataclasses import asdict

    from llmos.drivers.torch_driver import TorchDriver
    from llmos.specs import channel

    monkeypatch.setenv("LLMOS_CPU_BACKEND", "auto")
    driver = TorchDriver("cpu")
    loaded = driver.load(channel.Load(MODEL, asdict(registry.resolve(MODEL)), 64 << 20))
    assert loaded.backend == "llama.cpp"
    pair = driver.pairs[MODEL]
    assert set(pair.steps) == {"llama.cpp", "torch"} and pair.load == 0      # measured, and left empty
    pair.torch_from, pair.llamacpp_up_to = TORCH_FROM, 5       # this test is about the move, whatever this CPU measured

    def submit(rid: int, n: int = 16):
        assert driver.submit(channel.Submit(rid, MODEL, f"Count to {rid}:", None, n, 0.0, None, None, [], 1)) is None

    regimes, out = [], {}

    def step() -> None:
        events = driver.step()
        regimes.append(pair.regime)
        for ev in events:
            out.setdefault(ev.rid, {"n": 0})["n"] += ev.tokens
            out[ev.rid].update(finish=ev.finish, usage=ev.usage)

    def finish() -> dict[int, dict]:
        while driver.has_work():
            step()
        return out

    for rid in range(1, TORCH_FROM):       # one fewer than a crowd: llama.cpp runs them
        submit(rid)
    step()
    assert pair.regime == "llama.cpp" and pair.fast.load == TORCH_FROM - 1
    submit(100)                                        # the crowd's ninth: the next step moves them all
    out = finish()
    assert regimes[1] == "torch" and pair.moves == 2    # to torch at once, back once the crowd thinned out
    assert regimes[-1] == "llama.cpp" and pair.load == 0
    assert all(r["finish"] in ("stop", "length") and r["n"] == r["usage"]["completion_tokens"] for r in out.values())
    assert len(out) == TORCH_FROM
    submit(200)
    out.clear()
    finish()
    assert set(regimes[-len(out):]) == {"llama.cpp"} and pair.moves == 2 and out[200]["finish"] in ("stop", "length")
    driver.unload(MODEL)


@pytest.fixture
def copies(tmp_path, monkeypatch):
    """Derived weights go to this test's own cache directory, not the user's."""
    monkeypatch.setenv("LLMOS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


def test_a_q8_0_copy_is_made_once_kept_and_remade_when_its_source_changes(gguf, copies, tmp_path, monkeypatch):
    from llmos.drivers import llamacpp_weights

    first = llamacpp_weights.q8_0_copy(gguf)
    assert first.parent == copies and first.name.endswith(".q8_0.gguf") and first.stat().st_size > 0
    made = first.stat().st_ino
    assert llamacpp_weights.q8_0_copy(gguf) == first and first.stat().st_ino == made     # reused, not remade
    source = tmp_path / "model.gguf"
    source.write_bytes(open(gguf, "rb").read())
    monkeypatch.setattr(llamacpp_weights, "MAX_COPIES", 2)
    made = []
    for mtime in (1_000_000_000, 1_000_000_100, 1_000_000_200):     # the source changed three times
        os.utime(source, (mtime, mtime))
        made.append(llamacpp_weights.q8_0_copy(str(source)))
    assert len(set(made)) == 3                                       # each version its own copy
    assert sorted(copies.glob("*.q8_0.gguf")) == sorted(made[1:])    # at most MAX_COPIES: the oldest went
    assert not list(copies.glob("*.partial"))


TEXT = ("The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a can of oil and a rag. "
        "To make a good loaf of bread you need only flour, water, salt and time. Honeybees tell each other where "
        "flowers are through a dance, and a colony can send its foragers elsewhere within minutes. The committee "
        "met on Tuesday to discuss the budget for the new library wing, and after a long debate about shelving and "
        "lighting it agreed to wait for a revised plan. When the train pulled into the station it was nearly "
        "midnight, and the platform was empty except for a man selling roasted chestnuts from a cart. Glaciers "
        "move more slowly than almost anything we can see, yet they carve valleys and carry boulders across "
        "whole countries, leaving lakes behind when they retreat.")


def perplexity(r: LlamaCppRunner, ids: list[int]) -> float:
    """Teacher-forced, one token a call: exp of the mean negative log-likelihood of ids[1:]."""
    nll = 0.0
    for i in range(len(ids) - 1):
        logits = r.forward([Chunk(7, [ids[i]], i, [], True)])[0]
        nll -= float(logits.double().log_softmax(-1)[ids[i + 1]])
    r.release(7)
    return math.exp(nll / (len(ids) - 1))


def test_the_q8_0_copy_models_text_as_well_as_the_file(lm, gguf, copies):
    """Q8_0 of 4-bit blocks: each 8-bit step is about a sixteenth of the 4-bit one. Greedy answers may
    take another word where two are near (as they do when a batch changes), but the copy models text as
    the file does (benchmarks/llamacpp_weights.py gives the figures over a longer text)."""
    from llmos.drivers import llamacpp_weights

    ids = lm.tokenizer(TEXT).input_ids
    file_ppl = perplexity(runner(gguf, kept_tokens=0), ids)
    copy_ppl = perplexity(runner(str(llamacpp_weights.q8_0_copy(gguf)), kept_tokens=0), ids)
    assert 1 < file_ppl < 1000 and len(ids) > 120
    assert abs(copy_ppl / file_ppl - 1) < 0.03, (file_ppl, copy_ppl)     # +1.6% here, on 156 tokens


@pytest.mark.parametrize("pinned", ["file", "q8_0", "measure"])
def test_llama_cpp_runs_on_the_weights_the_operator_pinned_or_the_faster_measured(lm, gguf, copies, monkeypatch, pinned):
    from llmos.drivers.engine_pair import llamacpp_engine, pick_weights

    monkeypatch.setenv("LLMOS_LLAMACPP_WEIGHTS", pinned)
    built = []

    def make(path):
        built.append(path)
        return Engine(lm, 16 << 20, max_batch_tokens=256, gguf_path=path)

    engine, weights, steps = llamacpp_engine(make, gguf)
    if pinned == "file":
        assert weights == "file" and built == [gguf] and not steps and not copies.exists()
    elif pinned == "q8_0":                                     # no engine on the file is made to be thrown away
        assert weights == "q8_0" and len(built) == 1 and built[0].endswith(".q8_0.gguf") and not steps
    else:
        assert built[0] == gguf and built[1].endswith(".q8_0.gguf") and len(built) == 2
        assert set(steps) == {"file", "q8_0"} and weights == pick_weights(steps)
        assert bool(list(copies.glob("*.q8_0.gguf"))) == (weights == "q8_0")     # a copy not kept takes no disk
    assert engine.runner.lanes and engine.load == 0
    assert run(engine, [greedy(1, chat_ids(lm, "Name three colours."), 8)])[1]["finish"] == "length"


def test_a_copy_that_cannot_be_made_leaves_the_file_s_weights_unless_pinned(lm, gguf, tmp_path, monkeypatch):
    from llmos.drivers.engine_pair import llamacpp_engine

    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    monkeypatch.setenv("LLMOS_CACHE_DIR", str(blocked))          # the cache cannot be made: mkdir fails
    make = lambda path: Engine(lm, 16 << 20, max_batch_tokens=256, gguf_path=path)
    engine, weights, steps = llamacpp_engine(make, gguf)
    assert weights == "file" and not steps and engine.runner.lanes
    engine.runner.close()
    monkeypatch.setenv("LLMOS_LLAMACPP_WEIGHTS", "q8_0")
    with pytest.raises(OSError):                                  # asked for by the operator: a load error
        llamacpp_engine(make, gguf)
