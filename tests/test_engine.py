"""The inference engine, specified on tiny random-weight models (and once on the real one)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from llmos.drivers.batch import BlockTables, length_groups, pack_groups
from llmos.drivers.blocks import BLOCK_SIZE, BlockAllocator
from llmos.drivers.cuda_graphs import batch_sizes, padded_size
from llmos.drivers.embedding import embed
from llmos.drivers.engine import Engine, GenRequest, PromptTooLong
from llmos.drivers.hf_runner import HFRunner
from llmos.drivers.kvcache import KVLayout
from llmos.drivers.loader import LoadedModel, encode_prompt, load
from llmos.drivers.runner import PagedRunner
from llmos.drivers.sampling import sample
from llmos.drivers.sequence import Chunk
from llmos.drivers.slices import run_to_end
from llmos.kernel import registry
from llmos.specs.modelspec import DEFAULT_MODEL
from llmos.userland.testing import make_tiny_bert, make_tiny_llama

BIG_KV = 1 << 22   # bytes; holds thousands of tiny-model tokens


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> LoadedModel:
    return load(registry.resolve(make_tiny_llama(tmp_path_factory.mktemp("llama"))))


def ids(lm, text: str) -> list[int]:
    return lm.tokenizer(text).input_ids


def kv_blocks(lm, n: int) -> int:
    """A KV budget in bytes that holds exactly n blocks."""
    return n * BLOCK_SIZE * KVLayout.of(lm.model.config, lm.dtype).bytes_per_token


PROMPTS = ["A", "The quick brown fox", "Paris is the capital of France, Rome is",
           "An operating system shares one machine among many programs; a kernel owns the resources"]
LONG = PROMPTS[3] + " " + PROMPTS[3]


def request(rid, prompt_ids, max_tokens=24, temperature=0.0, top_p=1.0, top_k=0, stop=(), seed=None, priority=0,
            ignore_eos=False, cut_in=False):
    return GenRequest(rid, list(prompt_ids), max_tokens, temperature, top_p, top_k, list(stop), seed, priority,
                      ignore_eos, cut_in)


def run(engine: Engine, requests=(), out: dict | None = None) -> dict[int, dict]:
    """Add the requests and step until idle; per rid: tokens, text, finish, usage (into out)."""
    out = {} if out is None else out
    for r in requests:
        engine.add(r)
    collect(out, events_until_idle(engine))
    return out


def events_until_idle(engine: Engine, max_steps=10_000) -> list:
    events = []
    for _ in range(max_steps):
        if not engine.has_work():
            return events
        events += engine.step()
    raise AssertionError("engine did not finish")


def collect(out: dict, events) -> None:
    for e in events:
        r = out.setdefault(e.rid, {"tokens": [], "text": "", "finish": None, "usage": None})
        r["tokens"] += e.token_ids
        r["text"] += e.delta
        r["finish"], r["usage"], r["errno"], r["message"] = e.finish, e.usage, e.errno, e.message


def hf_greedy(lm, prompt_ids, max_tokens=24) -> list[int]:
    prompt = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = lm.model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                max_new_tokens=max_tokens, eos_token_id=lm.eos_token_ids,
                                pad_token_id=lm.tokenizer.pad_token_id)
    return out[0, prompt.shape[1]:].tolist()


# --- matches transformers ----------------------------------------------------------------------


def test_greedy_batch_matches_hf_generate(lm):
    engine = Engine(lm, BIG_KV)
    assert isinstance(engine.runner, PagedRunner)
    out = run(engine, [request(i, ids(lm, p)) for i, p in enumerate(PROMPTS)])
    for i, p in enumerate(PROMPTS):
        assert out[i]["tokens"] == hf_greedy(lm, ids(lm, p))


def _tiny(arch: str) -> torch.nn.Module:
    import transformers as tf
    common = dict(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.1)
    configs = {"qwen2": lambda: tf.Qwen2Config(**common),
               "qwen3": lambda: tf.Qwen3Config(head_dim=16, **common),
               "mistral": lambda: tf.MistralConfig(sliding_window=None, **common),
               "gpt2": lambda: tf.GPT2Config(vocab_size=384, n_embd=64, n_layer=2, n_head=4, n_positions=256)}
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(configs[arch]()).eval()


@pytest.mark.parametrize("arch, runner", [("qwen2", PagedRunner), ("qwen3", PagedRunner),
                                          ("mistral", PagedRunner), ("gpt2", HFRunner)])
def test_other_architectures_match_hf_generate(lm, arch, runner):
    model = _tiny(arch)
    other = LoadedModel(arch, "generate", model, lm.tokenizer, torch.device("cpu"), torch.float32, 256, 0,
                        lm.eos_token_ids)
    engine = Engine(other, BIG_KV)
    assert isinstance(engine.runner, runner)
    out = run(engine, [request(i, ids(lm, p)) for i, p in enumerate(PROMPTS)])
    for i, p in enumerate(PROMPTS):
        assert out[i]["tokens"] == hf_greedy(other, ids(lm, p))


def test_chunked_prefill_gives_the_same_tokens_as_unchunked(lm):
    long_prompt = ids(lm, " ".join(PROMPTS * 4))
    assert len(long_prompt) > 100
    chunked = run(Engine(lm, BIG_KV, max_batch_tokens=16), [request(0, long_prompt)])
    whole = run(Engine(lm, BIG_KV), [request(0, long_prompt)])
    assert chunked[0]["tokens"] == whole[0]["tokens"] == hf_greedy(lm, long_prompt)


@pytest.mark.parametrize("padded", [False, True])
def test_decode_batches_padded_or_not_match_hf_generate(lm, padded):
    # 3 requests finishing at different steps: decode batches of 3, 2 and 1 (padded: 4, 2, 1, as
    # CUDA graphs want them; the padding rows write and read only the scratch block).
    lengths = [4, 9, 17]
    engine = Engine(lm, BIG_KV)
    engine.runner.pad_decodes = padded
    out = run(engine, [request(i, ids(lm, PROMPTS[i + 1]), max_tokens=k) for i, k in enumerate(lengths)])
    for i, k in enumerate(lengths):
        assert out[i]["tokens"] == hf_greedy(lm, ids(lm, PROMPTS[i + 1]), max_tokens=k)


def test_decode_batch_sizes_are_powers_of_two_up_to_max_seqs():
    assert batch_sizes(1) == [1]
    assert batch_sizes(48) == [1, 2, 4, 8, 16, 32, 64]
    assert [padded_size(n, batch_sizes(256)) for n in (1, 3, 64, 65, 256)] == [1, 4, 64, 128, 256]


def test_block_tables_send_only_new_blocks_and_reuse_rows_of_released_sequences():
    tables = BlockTables(max_seqs=2, width=4, scratch_block=9, device=torch.device("cpu"))
    grow = [3]
    assert tables.sync([Chunk(7, [1], 0, grow, True), Chunk(8, [1], 0, [5, 6], True)]) == [0, 1]
    grow.append(4)
    assert tables.sync([Chunk(7, [1], 16, grow, True)]) == [0]
    assert tables.data.tolist() == [[3, 4, 9, 9], [5, 6, 9, 9], [9, 9, 9, 9]]   # last row: padding
    with pytest.raises(RuntimeError, match="max_seqs"):
        tables.sync([Chunk(1, [1], 0, [2], True)])
    tables.release(8)
    assert tables.sync([Chunk(1, [1], 0, [2], True)]) == [1]
    assert tables.data[1].tolist() == [2, 6, 9, 9]   # stale entries past the table are never read


def test_prefills_are_packed_with_at_most_double_padding():
    spans = [(0, 100), (100, 60), (160, 55), (215, 10), (225, 8)]
    groups = pack_groups(spans)
    assert sorted(s for g in groups for s in g) == sorted(spans)
    for g in groups:
        assert len(g) * max(n for _, n in g) <= 2 * sum(n for _, n in g)
    assert len(groups) < len(spans)


def test_decodes_of_unlike_lengths_attend_in_groups_and_match_hf_generate(lm):
    lengths = [530, 500, 300, 290, 40, 20, 20]
    groups = length_groups(lengths, max_padding=1.25)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths))) and len(groups) > 1
    for g in groups:
        assert len(g) * lengths[g[0]] <= 1.25 * sum(lengths[i] for i in g)
    engine = Engine(lm, BIG_KV)
    prompts = [ids(lm, LONG * 3), ids(lm, PROMPTS[0]), ids(lm, PROMPTS[2])]
    out = run(engine, [request(i, p, max_tokens=12) for i, p in enumerate(prompts)])
    for i, p in enumerate(prompts):
        assert out[i]["tokens"] == hf_greedy(lm, p, max_tokens=12)


def test_ignore_eos_runs_on_to_max_tokens(lm):
    prompt = ids(lm, PROMPTS[1])
    first = hf_greedy(lm, prompt, max_tokens=1)[0]
    eos_first = LoadedModel(lm.name, "generate", lm.model, lm.tokenizer, lm.device, lm.dtype, lm.context_length,
                            lm.bytes, [first])
    stopped = run(Engine(eos_first, BIG_KV), [request(0, prompt, max_tokens=8)])[0]
    assert stopped["finish"] == "stop" and stopped["tokens"] == [first]
    ignored = run(Engine(eos_first, BIG_KV), [request(0, prompt, max_tokens=8, ignore_eos=True)])[0]
    assert ignored["finish"] == "length" and ignored["tokens"] == hf_greedy(lm, prompt, max_tokens=8)


def test_token_ids_only_engine_gives_the_same_tokens_and_no_text(lm):
    reqs = [request(i, ids(lm, p)) for i, p in enumerate(PROMPTS)]
    with_text = run(Engine(lm, BIG_KV), reqs)
    ids_only = run(Engine(lm, BIG_KV, decode_text=False), reqs)
    for i in range(len(PROMPTS)):
        assert ids_only[i]["tokens"] == with_text[i]["tokens"]
        assert ids_only[i]["text"] == "" and ids_only[i]["finish"] == with_text[i]["finish"]


def test_token_ids_only_engine_refuses_stop_strings(lm):
    out = run(Engine(lm, BIG_KV, decode_text=False), [request(0, ids(lm, PROMPTS[1]), stop=["x"])])
    assert out[0]["finish"] == "error" and out[0]["errno"] == "EINVAL"
    assert "decode_text" in out[0]["message"] and out[0]["text"] == ""


# --- requests come and go ----------------------------------------------------------------------


def test_request_added_mid_generation_gets_correct_tokens(lm):
    engine = Engine(lm, BIG_KV)
    out = {}
    for i in range(2):
        engine.add(request(i, ids(lm, PROMPTS[i])))
    for _ in range(5):
        collect(out, engine.step())
    run(engine, [request(2, ids(lm, PROMPTS[2]))], out)
    for i in range(3):
        assert out[i]["tokens"] == hf_greedy(lm, ids(lm, PROMPTS[i]))


def rest_of_step(slices) -> list:
    """The events of a paused step's later pauses and of its end."""
    events = []
    end = run_to_end(slices, events.extend)
    return events + end


def test_a_cut_in_prompt_gets_its_first_token_in_the_middle_of_a_long_step(lm):
    engine = Engine(lm, BIG_KV, cut_in_tokens=16, decode_text=False)   # an event for every token
    engine.add(request(0, ids(lm, LONG), max_tokens=8))
    slices = engine.step_slices()
    assert next(slices) == []                      # paused after the first layer of the long prefill
    engine.add(request(1, ids(lm, PROMPTS[1]), max_tokens=8, cut_in=True))
    first = next(slices)                           # the next pause: the short one ran in between
    assert [(e.rid, e.tokens) for e in first] == [(1, 1)]
    assert engine.stats()["cut_ins"] == 1
    out = {}
    collect(out, first + rest_of_step(slices))
    run(engine, out=out)
    for rid, prompt in ((0, LONG), (1, PROMPTS[1])):
        assert out[rid]["tokens"] == hf_greedy(lm, ids(lm, prompt), max_tokens=8)


@pytest.mark.parametrize("prompt, cut_in", [(PROMPTS[1], False), (LONG, True)])
def test_only_short_cut_in_prompts_cut_into_a_running_step(lm, prompt, cut_in):
    engine = Engine(lm, BIG_KV, cut_in_tokens=16)
    engine.add(request(0, ids(lm, LONG), max_tokens=8))
    slices = engine.step_slices()
    next(slices)
    engine.add(request(1, ids(lm, prompt), max_tokens=8, cut_in=cut_in))
    assert all(e.rid == 0 for e in rest_of_step(slices)) and engine.stats()["cut_ins"] == 0
    assert engine.stats()["waiting"] == 1           # it runs from the next step on
    assert run(engine)[1]["tokens"] == hf_greedy(lm, ids(lm, prompt), max_tokens=8)


def test_a_cut_in_prompt_waiting_when_a_step_begins_goes_first_in_a_pass_of_its_own(lm):
    engine = Engine(lm, BIG_KV, max_batch_tokens=16, cut_in_tokens=16, decode_text=False)
    engine.add(request(0, ids(lm, LONG), max_tokens=4))
    engine.step()                                  # the long prompt is part-way through its prefill
    engine.add(request(1, ids(lm, PROMPTS[1]), max_tokens=4, cut_in=True))
    slices = engine.step_slices()
    assert [(e.rid, e.tokens) for e in next(slices)] == [(1, 1)]   # before the step's first layer
    assert [e.rid for e in rest_of_step(slices)] == [1]            # then it decodes in the step
    assert engine.stats()["cut_ins"] == 1
    out = run(engine)
    assert len(out[1]["tokens"]) == 2 and out[1]["finish"] == "length"


def test_finished_request_frees_its_slot(lm):
    engine = Engine(lm, BIG_KV, max_seqs=1)
    engine.add(request(0, ids(lm, PROMPTS[1]), max_tokens=3))
    engine.add(request(1, ids(lm, PROMPTS[2]), max_tokens=3))
    engine.step()
    assert engine.stats()["running"] == 1 and engine.stats()["waiting"] == 1
    out = run(engine)
    assert out[0]["finish"] == out[1]["finish"] == "length"
    assert engine.stats()["running"] == 0 and engine.stats()["kv_used_bytes"] == 0


def test_cancel_frees_kv_at_once_and_reports_cancelled(lm):
    engine = Engine(lm, BIG_KV)
    engine.add(request(7, ids(lm, PROMPTS[3]), max_tokens=100))
    engine.step()
    engine.step()
    assert engine.stats()["kv_used_bytes"] > 0
    assert engine.cancel(7)
    assert engine.stats()["kv_used_bytes"] == 0 and engine.stats()["running"] == 0
    events = engine.step()
    assert [(e.rid, e.finish) for e in events] == [(7, "cancelled")]
    assert not engine.has_work()
    assert not engine.cancel(7)


def test_fail_all_ends_every_request_with_eio_and_frees_the_cache(lm):
    engine = Engine(lm, BIG_KV, max_seqs=2)
    for rid in (1, 2, 3):
        engine.add(request(rid, ids(lm, PROMPTS[3]), max_tokens=100))
    engine.step()                                  # 1 and 2 run, 3 waits
    engine.cancel(1)
    events = engine.fail_all("engine failure: boom")
    assert [(e.rid, e.finish, e.errno) for e in events] == [(1, "cancelled", None), (2, "error", "EIO"),
                                                          (3, "error", "EIO")]
    assert all(e.message == "engine failure: boom" and e.delta == "" for e in events[1:])
    assert engine.stats()["kv_used_bytes"] == 0 and not engine.has_work()


def test_max_tokens_finishes_with_length_and_usage(lm):
    out = run(Engine(lm, BIG_KV), [request(0, ids(lm, PROMPTS[1]), max_tokens=5)])
    assert out[0]["finish"] == "length"
    assert out[0]["usage"] == {"prompt_tokens": len(ids(lm, PROMPTS[1])), "completion_tokens": 5}
    assert len(out[0]["tokens"]) == 5


def test_stop_string_ends_generation_and_is_not_emitted(lm):
    prompt = ids(lm, PROMPTS[1])  # its greedy text has plain ASCII stretches
    full = run(Engine(lm, BIG_KV), [request(0, prompt, max_tokens=40)])[0]["text"]
    clean = [i for i in range(4, len(full) - 2) if "\ufffd" not in full[i:i + 2]]
    stop = full[clean[0]:clean[0] + 2]
    out = run(Engine(lm, BIG_KV), [request(0, prompt, max_tokens=40, stop=[stop, "never appears"])])[0]
    assert out["finish"] == "stop"
    assert out["text"] == full[:full.index(stop)]


# --- sampling ----------------------------------------------------------------------------------


def test_same_seed_gives_same_text_and_different_seeds_differ(lm):
    def sampled(seed):
        return run(Engine(lm, BIG_KV), [request(0, ids(lm, PROMPTS[1]), temperature=1.0, seed=seed)])[0]["tokens"]
    assert sampled(1) == sampled(1)
    assert sampled(1) != sampled(2)


def test_sampled_tokens_do_not_depend_on_batch_company(lm):
    alone = run(Engine(lm, BIG_KV), [request(0, ids(lm, PROMPTS[1]), temperature=0.8, top_p=0.9, seed=5)])
    crowd = run(Engine(lm, BIG_KV), [request(0, ids(lm, PROMPTS[1]), temperature=0.8, top_p=0.9, seed=5)]
                + [request(i, ids(lm, PROMPTS[i % 4]), temperature=1.0, top_k=20, seed=i) for i in range(1, 6)])
    assert alone[0]["tokens"] == crowd[0]["tokens"]


def test_sampler_is_greedy_at_temperature_zero_and_with_top_k_one():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    argmax = logits.argmax(-1)
    zeros, ones = torch.zeros(4), torch.ones(4)
    seeds, positions = torch.arange(4), torch.zeros(4, dtype=torch.long)
    assert torch.equal(sample(logits, zeros, ones, torch.zeros(4, dtype=torch.long), seeds, positions), argmax)
    assert torch.equal(sample(logits, ones, ones, torch.ones(4, dtype=torch.long), seeds, positions), argmax)
    assert torch.equal(sample(logits, ones, torch.full((4,), 1e-6), torch.zeros(4, dtype=torch.long), seeds,
                              positions), argmax)


def test_nucleus_within_top_k_is_the_one_a_sort_of_the_whole_vocabulary_gives():
    """With a top_k on every row the filter sorts only the top k (3.5 ms -> 0.2 ms a row of 49,152):
    the tokens it keeps, and their logits, are those of the whole sort, and a row without top_k
    in the batch takes the whole sort for all."""
    from llmos.drivers.sampling import _filter

    x = torch.randn(4, 3000, generator=torch.Generator().manual_seed(1)) * 3
    top_p = torch.tensor([0.9, 0.5, 1.0, 0.97])

    def whole_sort(x, top_k, top_p):
        ordered, order = x.sort(dim=-1, descending=True, stable=True)
        rank = torch.arange(x.shape[-1])
        ordered = ordered.masked_fill((top_k[:, None] > 0) & (rank[None, :] >= top_k[:, None]), float("-inf"))
        probs = ordered.softmax(-1)
        ordered = ordered.masked_fill(probs.cumsum(-1) - probs > top_p[:, None], float("-inf"))
        return torch.full_like(x, float("-inf")).scatter(-1, order, ordered)

    for top_k in (torch.tensor([50, 50, 40, 1000]), torch.tensor([50, 0, 40, 1000])):
        got, want = _filter(x, top_k, top_p), whole_sort(x, top_k, top_p)
        assert torch.equal(got.isfinite(), want.isfinite())
        assert torch.equal(got[got.isfinite()], want[want.isfinite()])
        assert 1 < int(got[0].isfinite().sum()) < 50      # the nucleus cut inside the top k


def test_sampling_within_the_top_k_picks_what_noise_over_the_whole_vocabulary_picks():
    """sample() makes noise for the top k tokens alone when every hot row has a top_k: the same
    choices as the whole-vocabulary Gumbel-max, greedy and unfiltered rows mixed in."""
    from llmos.drivers.sampling import _filter, uniform_noise

    def whole(x, t, p, k, s, pos):
        hot = (t > 0).nonzero().squeeze(1)
        y = _filter(x[hot] / t[hot][:, None], k[hot], p[hot])
        return x.argmax(-1).index_copy(0, hot, (y - torch.log(-torch.log(uniform_noise(s[hot], pos[hot], y.shape[-1])))).argmax(-1))

    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.9, 1.0, 1.0, 0.5, 0.0, 0.99])
    for trial in range(100):
        x = torch.randn(6, 2000, generator=g) * 3
        t = torch.tensor([0.7, 0.0 if trial % 2 else 0.1, 1.5, 1.0, 0.3, 2.0])
        k = torch.tensor([50, 0 if trial % 3 else 7, 5, 1, 100, 1500])
        s, pos = torch.randint(0, 1 << 40, (6,), generator=g), torch.randint(0, 500, (6,), generator=g)
        assert torch.equal(sample(x, t, p, k, s, pos), whole(x, t, p, k, s, pos))


def test_sampler_keeps_only_the_most_likely_token_at_top_p_zero():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    positions = torch.zeros(4, dtype=torch.long)
    got = sample(logits, torch.full((4,), 5.0), torch.zeros(4), torch.zeros(4, dtype=torch.long), torch.arange(4),
                 positions)
    assert torch.equal(got, logits.argmax(-1))


def test_a_request_with_top_p_zero_generates_the_greedy_tokens(lm):
    prompt = ids(lm, PROMPTS[2])
    out = run(Engine(lm, BIG_KV), [request(0, prompt, temperature=1.0, top_p=0.0, seed=3)])[0]
    assert out["finish"] != "error" and out["tokens"] == hf_greedy(lm, prompt)


# --- KV budget: queueing, preemption, rejection --------------------------------------------------


def test_block_allocator_hands_out_whole_blocks_and_takes_them_back():
    blocks = BlockAllocator(num_blocks=4, block_size=16)
    blocks.allocate(1, 17)
    assert blocks.block_table(1) == [0, 1] and blocks.num_free_blocks == 2
    assert blocks.can_extend(1, 48) and not blocks.can_extend(1, 65) and not blocks.can_allocate(33)
    assert blocks.extend(1, 48) == [0, 1, 2]
    blocks.free(1)
    assert blocks.num_free_blocks == 4 and blocks.can_allocate(64)


def test_preemption_under_a_tiny_kv_budget_gives_the_same_tokens(lm):
    reqs = [request(i, ids(lm, p), max_tokens=40, temperature=1.0, seed=100 + i) for i, p in enumerate(PROMPTS)]
    roomy = run(Engine(lm, BIG_KV), reqs)
    tight_engine = Engine(lm, kv_blocks(lm, 10))
    tight = run(tight_engine, reqs)
    assert tight_engine.stats()["preemptions"] > 0
    for i in range(len(PROMPTS)):
        assert tight[i]["finish"] == "length"
        assert tight[i]["tokens"] == roomy[i]["tokens"]
        assert tight[i]["text"] == roomy[i]["text"]


def test_admission_under_a_small_kv_budget_queues_instead_of_failing(lm):
    engine = Engine(lm, kv_blocks(lm, 4))  # room for about one sequence
    prompt = ids(lm, PROMPTS[3])
    out: dict = {}
    for i in range(3):
        engine.add(request(i, prompt, max_tokens=20))
    collect(out, engine.step())
    assert engine.stats()["waiting"] >= 1
    run(engine, out=out)
    assert [out[i]["finish"] for i in range(3)] == ["length"] * 3
    assert out[0]["tokens"] == out[1]["tokens"] == out[2]["tokens"]


def test_prompt_that_can_never_fit_the_kv_budget_fails_with_error(lm):
    out = run(Engine(lm, kv_blocks(lm, 2)), [request(0, list(range(5, 45)))])
    assert out[0]["finish"] == "error" and out[0]["errno"] == "ENOMEM" and out[0]["usage"] is None
    assert "KV cache" in out[0]["message"] and out[0]["text"] == ""


def test_a_sequence_that_fills_the_whole_kv_cache_ends_with_length(lm):
    out = run(Engine(lm, kv_blocks(lm, 2)), [request(0, [5, 6, 7], max_tokens=100)])
    assert out[0]["finish"] == "length"
    assert out[0]["usage"]["completion_tokens"] == 2 * BLOCK_SIZE + 1 - 3


def test_higher_priority_is_admitted_first(lm):
    engine = Engine(lm, BIG_KV, max_seqs=1)
    engine.add(request(0, ids(lm, PROMPTS[1]), max_tokens=2))
    engine.add(request(1, ids(lm, PROMPTS[1]), max_tokens=2, priority=5))
    assert [e.rid for e in events_until_idle(engine) if e.finish] == [1, 0]


def test_a_prompt_that_fills_the_context_is_refused_at_once(lm):
    engine = Engine(lm, BIG_KV)
    with pytest.raises(PromptTooLong) as refused:
        engine.add(request(0, [5] * lm.context_length))
    assert refused.value.errno == "EINVAL"
    assert str(refused.value) == f"the prompt is {lm.context_length} tokens; model '{lm.name}' takes at most " \
                                 f"{lm.context_length - 1}"
    assert not engine.has_work()


def test_max_tokens_is_cut_to_the_context_the_prompt_leaves(lm):
    prompt = [5] * (lm.context_length - 3)
    out = run(Engine(lm, BIG_KV), [request(0, prompt, max_tokens=100, ignore_eos=True)])[0]
    assert out["finish"] == "length" and out["usage"]["completion_tokens"] == 3


def test_a_long_prefill_does_not_delay_running_decodes(lm):
    def steps_until_done(long_prompt_too: bool) -> int:
        engine = Engine(lm, BIG_KV, max_batch_tokens=16)
        engine.add(request(0, ids(lm, PROMPTS[1]), max_tokens=30))
        engine.step()
        if long_prompt_too:
            engine.add(request(1, ids(lm, " ".join(PROMPTS * 3)), max_tokens=5))
        for step in range(2, 1000):
            if any(e.rid == 0 and e.finish for e in engine.step()):
                return step
    assert steps_until_done(long_prompt_too=True) == steps_until_done(long_prompt_too=False) == 30


# --- chat and embeddings -----------------------------------------------------------------------


def test_chat_messages_go_through_the_chat_template(lm):
    got = encode_prompt(lm, None, [{"role": "user", "content": "hi"}])
    assert lm.tokenizer.decode(got) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_messages_to_a_model_without_a_chat_template_are_refused(lm):
    plain = copy.copy(lm.tokenizer)
    plain.chat_template = None
    no_template = dataclasses.replace(lm, tokenizer=plain)
    with pytest.raises(ValueError, match="no chat template"):
        encode_prompt(no_template, None, [{"role": "user", "content": "hi"}])


def test_embeddings_are_normalized_and_deterministic(tmp_path):
    bert = load(registry.resolve(make_tiny_bert(tmp_path / "bert")))
    texts = ["Paris is the capital of France", "hello", "a kernel owns the resources"]
    first, tokens = embed(bert, texts)
    again, _ = embed(bert, texts)
    alone, _ = embed(bert, texts[:1])
    assert first == again and torch.allclose(torch.tensor(alone[0]), torch.tensor(first[0]), atol=1e-6)
    assert tokens > len(texts)
    for v in first:
        assert abs(sum(x * x for x in v) - 1) < 1e-5


# --- the real model ----------------------------------------------------------------------------


@pytest.mark.real_model
def test_real_model_answers_paris_and_matches_hf_greedy():
    real = load(registry.resolve(DEFAULT_MODEL))
    prompt = encode_prompt(real, None, [{"role": "user", "content": "What is the capital of France?"}])
    out = run(Engine(real, 64 << 20), [request(0, prompt, max_tokens=30)])[0]
    assert "Paris" in out["text"]
    assert out["tokens"] == hf_greedy(real, prompt, max_tokens=30)


# --- handing requests over to another engine of the same model (engine_pair.py) -----------------


def test_requests_handed_over_mid_answer_finish_there_as_they_would_have(lm):
    """hand_over moves running and waiting requests between two engines of one model: each is
    recomputed from its prompt and what it had generated; greedy and seeded-sampled answers,
    text and usage come out as on one engine alone."""
    reqs = [request(i, ids(lm, p), max_tokens=20, temperature=0.0 if i % 2 else 0.9, seed=i, ignore_eos=True)
            for i, p in enumerate(PROMPTS)]
    alone = run(Engine(lm, BIG_KV), [dataclasses.replace(r) for r in reqs])
    first, second = Engine(lm, BIG_KV), Engine(lm, BIG_KV, max_seqs=2)   # two run, two wait there
    for r in reqs:
        first.add(dataclasses.replace(r))
    out: dict = {}
    for _ in range(5):
        collect(out, first.step())
    assert first.load == 4
    moved = first.hand_over(second, keep=lambda seq: seq.id == 3)
    assert sorted(moved) == [0, 1, 2] and first.load == 1 and second.load == 3
    assert first.blocks.num_used_blocks == len(first.blocks.block_table(3))    # the others' blocks came back
    assert second.blocks.num_used_blocks == 0 and not second.running           # they wait to be recomputed
    while first.has_work() or second.has_work():
        collect(out, first.step() + second.step())
    for rid, want in alone.items():
        assert out[rid]["tokens"] == want["tokens"] and out[rid]["text"] == want["text"]
        assert out[rid]["usage"] == want["usage"] and out[rid]["finish"] == "length"
