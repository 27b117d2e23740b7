"""A fault stays with the request that caused it (issue 25, item 2), specified on the engine and the
torch driver: a request the engine cannot run is refused at admission, alone; a step that fails is
run again without the suspect requests, bisecting the batch, so the others finish with the very
text they write in a quiet run; only a fault that no subset isolates fails everyone."""

from __future__ import annotations

import pytest
import torch

from llmos.drivers import engine as engine_module
from llmos.drivers import logits as logits_module
from llmos.drivers.engine import Engine, GenRequest
from llmos.drivers.loader import LoadedModel, load
from llmos.kernel import registry
from llmos.userland.testing import make_tiny_llama

BIG_KV = 1 << 22
PROMPTS = ["A", "The quick brown fox", "Paris is the capital of France, Rome is",
           "An operating system shares one machine among many programs; a kernel owns the resources",
           "Numbers: 0 1 2 3", "Questions? Answers!"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> LoadedModel:
    return load(registry.resolve(make_tiny_llama(tmp_path_factory.mktemp("llama"))))


def request(lm, rid: int, prompt: str, **kw) -> GenRequest:
    args = dict(max_tokens=20, temperature=0.8, top_p=0.95, top_k=40, stop=[], seed=1000 + rid)
    args.update(kw)
    return GenRequest(rid, lm.tokenizer(prompt).input_ids, **args)


def run(engine: Engine, requests) -> dict[int, dict]:
    """Add the requests, step until idle; per rid: text, finish, errno."""
    out: dict[int, dict] = {}
    for r in requests:
        engine.add(r)
    for _ in range(10_000):
        if not engine.has_work():
            return out
        for e in engine.step():
            r = out.setdefault(e.rid, {"text": "", "tokens": [], "finish": None, "errno": None, "message": None})
            r["text"] += e.delta
            r["tokens"] += e.token_ids
            r["finish"], r["errno"], r["message"] = e.finish, e.errno, e.message
    raise AssertionError("the engine did not finish")


def quiet(lm, rids=range(len(PROMPTS))) -> dict[int, dict]:
    return run(Engine(lm, BIG_KV), [request(lm, i, PROMPTS[i]) for i in rids])


def finished_as_in(out: dict, reference: dict, rids) -> bool:
    return all(out[i]["finish"] in ("stop", "length") and out[i]["text"] == reference[i]["text"]
               and out[i]["tokens"] == reference[i]["tokens"] for i in rids)


# --- admission --------------------------------------------------------------------------------------


def test_top_k_past_the_vocabulary_keeps_every_token_as_top_k_off_does(lm):
    """Before: top_k 2**63 (the kernel let it through) overflowed the sampler's int64 column, and the
    step failed for every request in the batch."""
    off = run(Engine(lm, BIG_KV), [request(lm, 0, PROMPTS[1], top_k=0)])
    for top_k in (lm.model.config.vocab_size + 1, 2**63, 2**64 - 1):
        out = run(Engine(lm, BIG_KV), [request(lm, 0, PROMPTS[1], top_k=top_k)])
        assert out[0]["tokens"] == off[0]["tokens"]


@pytest.mark.parametrize("bad", [dict(temperature=float("nan")), dict(temperature=-1.0), dict(temperature=float("inf")),
                                 dict(top_p=float("nan")), dict(top_p=1.5), dict(top_k=-1),
                                 dict(repetition_penalty=0.0), dict(repetition_penalty=float("nan")),
                                 dict(stop=[7]), dict(prompt_ids=[10**6]), dict(resume=[-1])],
                         ids=lambda bad: "-".join(f"{k}={v}" for k, v in bad.items()))
def test_a_request_the_engine_cannot_run_is_refused_alone_with_einval(lm, bad):
    reference = quiet(lm, range(3))
    poisoned = request(lm, 9, PROMPTS[3], **{k: v for k, v in bad.items() if k != "prompt_ids"})
    if "prompt_ids" in bad:
        poisoned.prompt_ids = poisoned.prompt_ids + bad["prompt_ids"]
    engine = Engine(lm, BIG_KV)
    engine.add(request(lm, 0, PROMPTS[0]))
    out = run(engine, [poisoned, request(lm, 1, PROMPTS[1]), request(lm, 2, PROMPTS[2])])
    assert out[9]["finish"] == "error" and out[9]["errno"] == "EINVAL"
    assert finished_as_in(out, reference, range(3))


# --- a step that fails ---------------------------------------------------------------------------------


def poison_forward(engine: Engine, monkeypatch, rids: set[int], after_layers: int = 1) -> list[int]:
    """Make the runner's pass raise, after `after_layers` layers (so the cache was written), whenever a
    chunk of one of `rids` is in it; the sizes of the passes tried come back in the list."""
    real = engine.runner.forward_slices
    tried: list[int] = []

    def forward_slices(chunks):
        tried.append(len(chunks))
        slices, logits = real(chunks), None
        for _ in range(after_layers):
            try:
                next(slices)
            except StopIteration as end:      # a pass with fewer pauses than that
                logits = end.value
                break
            yield
        if any(c.seq_id in rids for c in chunks):
            slices.close()
            raise RuntimeError("injected fault")
        return logits if logits is not None else (yield from slices)

    monkeypatch.setattr(engine.runner, "forward_slices", forward_slices)
    monkeypatch.setattr(engine.runner, "forward", lambda chunks: engine_module.run_to_end(forward_slices(chunks)))
    return tried


@pytest.mark.parametrize("poisoned", [{3}, {0, 5}], ids=["one", "two"])
def test_a_fault_in_the_forward_pass_ends_its_requests_alone_and_the_others_write_their_quiet_text(
        lm, monkeypatch, poisoned):
    """Before: the step raised, and the driver failed every request on the engine (fail_all)."""
    reference = quiet(lm)
    engine = Engine(lm, BIG_KV)
    tried = poison_forward(engine, monkeypatch, poisoned)
    out = run(engine, [request(lm, i, p) for i, p in enumerate(PROMPTS)])
    for i in poisoned:
        assert out[i]["finish"] == "error" and out[i]["errno"] == "EIO" and "injected fault" in out[i]["message"]
    assert finished_as_in(out, reference, set(range(len(PROMPTS))) - poisoned)
    assert max(tried) == len(PROMPTS) and 1 in tried        # the whole batch first, then halves down to one


def test_a_poisoned_decode_after_a_good_prefill_ends_alone_and_the_cache_stays_right(lm, monkeypatch):
    """The fault comes in a decode step (layers already written for every row), not at admission."""
    reference = quiet(lm)
    engine = Engine(lm, BIG_KV)
    for i, p in enumerate(PROMPTS):
        engine.add(request(lm, i, p))
    first = engine.step()     # the prefill of all, and each one's first token
    poison_forward(engine, monkeypatch, {2}, after_layers=2)
    out = run(engine, [])
    for e in first:
        out[e.rid]["text"] = e.delta + out[e.rid]["text"]
        out[e.rid]["tokens"] = e.token_ids + out[e.rid]["tokens"]
    assert out[2]["finish"] == "error" and out[2]["errno"] == "EIO"
    assert finished_as_in(out, reference, [0, 1, 3, 4, 5])


def test_a_fault_in_one_requests_sampling_ends_it_alone(lm, monkeypatch):
    reference = quiet(lm)
    real = logits_module.sample_rows

    def sample_rows(logits, temperature, top_p, top_k, seeds, positions):
        if 1004 in seeds and positions[seeds.index(1004)] == 3:
            raise ValueError("injected sampler fault")
        return real(logits, temperature, top_p, top_k, seeds, positions)

    monkeypatch.setattr(logits_module, "sample_rows", sample_rows)
    out = run(Engine(lm, BIG_KV), [request(lm, i, p) for i, p in enumerate(PROMPTS)])
    assert out[4]["finish"] == "error" and out[4]["errno"] == "EIO"
    assert len(out[4]["tokens"]) == 3       # what it wrote before the fault came through
    assert finished_as_in(out, reference, [0, 1, 2, 3, 5])


def test_a_fault_that_no_subset_isolates_still_fails_the_step(lm, monkeypatch):
    """The engine is broken, not a request: the driver then ends everyone with EIO (fail_all)."""
    engine = Engine(lm, BIG_KV)
    poison_forward(engine, monkeypatch, set(range(len(PROMPTS))))
    for i, p in enumerate(PROMPTS):
        engine.add(request(lm, i, p))
    with pytest.raises(RuntimeError, match="injected fault"):
        engine.step()


def test_a_fault_under_the_fallback_runner_is_retried_on_caches_rolled_back(lm, monkeypatch):
    """HFRunner keeps a transformers cache per sequence that a failed pass may have grown: a retry
    crops it back first, so the survivors' tokens are still those of a quiet run."""
    import transformers as tf

    from llmos.drivers.hf_runner import HFRunner

    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(
        tf.GPT2Config(vocab_size=384, n_embd=64, n_layer=2, n_head=4, n_positions=256)).eval()
    gpt2 = LoadedModel("gpt2", "generate", model, lm.tokenizer, torch.device("cpu"), torch.float32, 256, 0,
                       lm.eos_token_ids)
    reference = run(Engine(gpt2, BIG_KV), [request(lm, i, p) for i, p in enumerate(PROMPTS)])
    engine = Engine(gpt2, BIG_KV)
    assert isinstance(engine.runner, HFRunner)
    for i, p in enumerate(PROMPTS):
        engine.add(request(lm, i, p))
    first = engine.step()
    poison_forward(engine, monkeypatch, {5}, after_layers=5)    # HFRunner pauses after each sequence
    out = run(engine, [])
    for e in first:
        out[e.rid]["tokens"] = e.token_ids + out[e.rid]["tokens"]
        out[e.rid]["text"] = e.delta + out[e.rid]["text"]
    assert out[5]["finish"] == "error"
    assert finished_as_in(out, reference, range(5))


# --- the driver ---------------------------------------------------------------------------------------


def test_a_submission_the_driver_cannot_encode_fails_alone_and_the_driver_goes_on(tiny_llama, monkeypatch):
    """Before: an exception other than ValueError while encoding a prompt left submit, and the loop
    that called it, so the driver process died and every tenant on the device got EIO."""
    from llmos.drivers import loader
    from llmos.drivers.torch_driver import TorchDriver
    from llmos.specs import channel

    driver = TorchDriver("cpu", "float32")
    driver.load(channel.Load("tiny", registry.resolve(tiny_llama).to_wire(), BIG_KV))

    def submit(rid, prompt):
        return driver.submit(channel.Submit(rid=rid, model="tiny", prompt=prompt, messages=None, max_tokens=4,
                                            temperature=0.0, top_p=None, top_k=None, stop=[], seed=1))

    real = loader.encode_prompt
    monkeypatch.setattr(loader, "encode_prompt",
                        lambda lm, prompt, messages, tools=None: (_ for _ in ()).throw(TypeError("bad")) if prompt == "poison"
                        else real(lm, prompt, messages, tools))
    failed = submit(1, "poison")
    assert failed is not None and failed.finish == "error" and failed.errno == "EIO"
    assert submit(2, "The quick brown fox") is None
    events = []
    while driver.has_work():
        events += driver.step()
    assert [e.finish for e in events if e.rid == 2][-1] == "length"
