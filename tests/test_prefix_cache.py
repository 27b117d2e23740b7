"""The prefix cache: full KV blocks reused by requests that begin alike, within one cache salt.

First the bookkeeping alone (blocks of 4 tokens, no model), then the engine on the tiny model
(every output with the cache equals the output without it), then once through a real kernel.
"""

from __future__ import annotations

import pytest

from llmos.drivers.blocks import BLOCK_SIZE, BlockAllocator
from llmos.drivers.engine import Engine
from llmos.drivers.loader import encode_prompt, load
from llmos.drivers.prefix_cache import block_keys
from llmos.drivers.batch_scheduler import BatchScheduler
from llmos.drivers.sequence import GenRequest, Sequence
from llmos.kernel import registry
from llmos.userland.testing import CORPUS

BLOCK = 4
BIG_KV = 1 << 22


def keys(tokens: list[int], salt: str = "alice") -> list[bytes]:
    return block_keys([], salt, tokens, BLOCK, len(tokens) // BLOCK)


def cached_allocator(num_blocks: int) -> BlockAllocator:
    return BlockAllocator(num_blocks, block_size=BLOCK, prefix_cache=True)


def computed(blocks: BlockAllocator, seq_id: int, tokens: list[int], salt: str = "alice") -> None:
    """A sequence of tokens allocated and run through the model: its full blocks are cached."""
    blocks.allocate(seq_id, len(tokens), keys(tokens[:-1], salt))
    blocks.index(seq_id, keys(tokens, salt))


# --- keys ---------------------------------------------------------------------------------------


def test_a_block_key_names_each_of_its_tokens_everything_before_them_and_the_salt():
    tokens = list(range(8))
    assert keys(tokens) == keys(list(tokens))
    for i in range(BLOCK):
        assert keys(tokens[:i] + [99] + tokens[i + 1:])[0] != keys(tokens)[0]
    assert keys(tokens)[0] != keys(tokens, salt="bob")[0]
    changed_first_block = [99, *tokens[1:]]
    assert keys(changed_first_block)[1] != keys(tokens)[1]   # same tokens in block 1, different past


# --- the allocator's bookkeeping ------------------------------------------------------------------


def test_a_sequence_beginning_with_cached_blocks_shares_them_and_starts_after_them():
    blocks = cached_allocator(8)
    computed(blocks, 1, list(range(10)))                       # blocks 0, 1 full; 2 partial
    assert blocks.allocate(2, 10, keys(list(range(9)))) == 2 * BLOCK
    assert blocks.block_table(2)[:2] == blocks.block_table(1)[:2]
    assert blocks.block_table(2)[2] != blocks.block_table(1)[2]
    assert blocks.num_used_blocks == 4


def test_a_shared_block_is_free_only_when_its_last_holder_lets_go():
    blocks = cached_allocator(8)
    computed(blocks, 1, list(range(9)))
    blocks.allocate(2, 9, keys(list(range(8))))
    blocks.free(1)
    assert blocks.num_used_blocks == 3                          # 2 shared + 2's own last block
    blocks.free(2)
    assert blocks.num_used_blocks == 0 and blocks.cache.num_idle_blocks == 2


def test_only_blocks_of_the_same_salt_are_reused():
    blocks = cached_allocator(8)
    computed(blocks, 1, list(range(9)), salt="alice")
    assert blocks.allocate(2, 9, keys(list(range(8)), salt="bob")) == 0
    assert blocks.cache.hit_blocks == 0 and blocks.cache.queried_blocks == 2 + 2   # alice's, then bob's


def test_idle_cached_blocks_count_as_free_and_are_handed_out_last_least_recently_used_first():
    blocks = cached_allocator(4)
    computed(blocks, 1, [1] * 5)                                # caches block 0, holds 1 more
    computed(blocks, 2, [2] * 4)                                # caches block 2 (its block 1 not yet)
    blocks.free(1)                                              # its cached block idles first
    blocks.free(2)
    assert blocks.num_free_blocks == 4 and blocks.cache.num_idle_blocks == 2
    blocks.allocate(3, 8)                                       # two never-cached blocks suffice
    assert blocks.cache.num_idle_blocks == 2
    blocks.extend(3, 12)                                        # one more: the older idle block goes
    assert blocks.cached_blocks(keys([1] * 4)) == [] and blocks.cached_blocks(keys([2] * 4)) != []


def test_a_reused_idle_block_is_no_longer_free():
    blocks = cached_allocator(4)
    computed(blocks, 1, [1] * 5)
    blocks.free(1)
    assert blocks.blocks_to_take(5, keys([1] * 4)) == 2         # one new block, and the idle one it reuses
    assert blocks.can_allocate(16, keys([1] * 4)) and not blocks.can_allocate(17, keys([1] * 4))


# --- the scheduler -------------------------------------------------------------------------------


def seq(rid: int, tokens: list[int], salt: str = "alice", cut_in: bool = False) -> Sequence:
    req = GenRequest(rid, list(tokens), 100, 0.0, 1.0, 0, [], None, cut_in=cut_in, cache_salt=salt)
    return Sequence(req, seed=0, max_tokens=100)


def finish(s: BatchScheduler, q: Sequence) -> None:
    """Run q's whole prompt through a pass, then let it go."""
    if q.admitted is None:
        s.schedule()
    while q.num_uncomputed:
        s.computed(s.schedule())
    s.remove(q)


def test_an_idle_cached_block_is_evicted_before_anyone_is_preempted():
    s = BatchScheduler(cached_allocator(4), max_seqs=8, max_batch_tokens=64)
    cached = seq(1, [1] * 9)
    s.add(cached)
    finish(s, cached)                                           # two idle cached blocks, two never cached
    running = seq(2, [2] * 8)
    s.add(running)
    s.computed(s.schedule())
    running.tokens.append(9)                                    # its next token needs a third block
    plan = s.schedule()
    assert [c.seq_id for c in plan.chunks] == [2] and s.num_preemptions == 0
    assert s.blocks.cache.num_idle_blocks == 1


def test_a_block_is_cached_once_full_and_computed_so_a_cancel_mid_prefill_keeps_what_was_computed():
    s = BatchScheduler(cached_allocator(16), max_seqs=8, max_batch_tokens=6)
    prompt = list(range(20))
    first = seq(1, prompt)
    s.add(first)
    s.computed(s.schedule())                                    # 6 tokens: one full block
    assert s.blocks.cache.num_cached_blocks == 1
    s.remove(first)                                             # cancelled mid-prefill
    again = seq(2, prompt)
    s.add(again)
    plan = s.schedule()
    assert again.num_computed == BLOCK and plan.chunks[0].start == BLOCK


def test_the_last_token_is_always_computed_so_there_are_logits_to_sample():
    s = BatchScheduler(cached_allocator(16), max_seqs=8, max_batch_tokens=64)
    prompt = list(range(8))                                     # exactly two full blocks
    first = seq(1, prompt)
    s.add(first)
    finish(s, first)
    s.add(seq(2, prompt))
    plan = s.schedule()
    assert [(c.start, len(c.tokens), c.sample) for c in plan.chunks] == [(BLOCK, BLOCK, True)]


def test_a_cut_in_needs_room_only_for_its_uncached_tokens():
    s = BatchScheduler(cached_allocator(16), max_seqs=8, max_batch_tokens=64, cut_in_tokens=6)
    system = list(range(12))
    warm = seq(1, system + [50])
    s.add(warm)
    finish(s, warm)
    s.add(seq(2, system + [60, 61], cut_in=True))               # 14 tokens, 12 of them cached
    s.begin_step()
    plan = s.schedule_cut_ins()
    assert [(c.start, len(c.tokens)) for c in plan.chunks] == [(12, 2)]


# --- the engine on the tiny model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def lm(tiny_llama):
    return load(registry.resolve(tiny_llama))


def system_prompt(lm, n_tokens: int) -> list[int]:
    """The tiny model's corpus, cut to n_tokens."""
    words = (CORPUS.split() * 20)
    ids = lm.tokenizer(" ".join(words)).input_ids
    assert len(ids) >= n_tokens
    return ids[:n_tokens]


def request(rid, prompt_ids, salt="alice", max_tokens=16, temperature=0.0, seed=None, resume=(), top_p=0.95,
            top_k=0) -> GenRequest:
    return GenRequest(rid, list(prompt_ids), max_tokens, temperature, top_p, top_k, [], seed, cache_salt=salt,
                      resume=list(resume))


def run(engine: Engine, requests, text: dict | None = None) -> dict[int, list[int]]:
    """Add the requests and step until idle; the tokens each generated (and its text, into text)."""
    out: dict[int, list[int]] = {}
    text = {} if text is None else text
    for r in requests:
        engine.add(r)
    while engine.has_work():
        for e in engine.step():
            assert e.finish != "error", e.message
            out.setdefault(e.rid, []).extend(e.token_ids)
            text[e.rid] = text.get(e.rid, "") + e.delta
    return out


def waves(lm, prefix_cache: bool, kv_bytes: int = BIG_KV, **engine_args) -> tuple[dict, Engine]:
    """Requests sharing a 100-token beginning, greedy and seeded, in two waves (so the second hits)."""
    engine = Engine(lm, kv_bytes, prefix_cache=prefix_cache, **engine_args)
    shared = system_prompt(lm, 100)
    out = {}
    for wave in range(2):
        reqs = [request(10 * wave + i, shared + [40 + i, 41 + wave], max_tokens=24, temperature=0.9 * (i % 2),
                        seed=7 + i) for i in range(4)]
        out |= run(engine, reqs)
    return out, engine


def test_outputs_with_the_cache_equal_outputs_without_it(lm):
    cached, engine = waves(lm, prefix_cache=True)
    uncached, _ = waves(lm, prefix_cache=False)
    assert engine.stats()["prefix_hit_blocks"] > 0
    assert cached == uncached


def test_outputs_with_the_cache_equal_outputs_without_it_under_preemption(lm):
    per_block = BLOCK_SIZE * Engine(lm, BIG_KV).layout.bytes_per_token
    cached, engine = waves(lm, prefix_cache=True, kv_bytes=11 * per_block)
    uncached, _ = waves(lm, prefix_cache=False)
    assert engine.stats()["preemptions"] > 0 and engine.stats()["prefix_hit_blocks"] > 0
    assert cached == uncached


def test_a_prompt_one_token_past_its_cached_blocks_computes_that_token_alone(lm):
    shared = system_prompt(lm, 2 * BLOCK_SIZE)
    engine = Engine(lm, BIG_KV)
    run(engine, [request(1, shared + [40], max_tokens=1)])
    before = engine.stats()["computed_tokens"]
    cached = run(engine, [request(2, shared + [41], max_tokens=12, temperature=0.9, seed=4)])[2]
    assert engine.stats()["computed_tokens"] - before == 1 + 11
    assert cached == run(Engine(lm, BIG_KV, prefix_cache=False),
                         [request(2, shared + [41], max_tokens=12, temperature=0.9, seed=4)])[2]


def test_a_second_request_with_the_same_long_prefix_computes_fewer_tokens(lm):
    engine = Engine(lm, BIG_KV)
    shared = system_prompt(lm, 200)
    run(engine, [request(1, shared + [40], max_tokens=1)])
    first = engine.stats()["computed_tokens"]
    run(engine, [request(2, shared + [41], max_tokens=1)])
    second = engine.stats()["computed_tokens"] - first
    assert first == 201 and second == 201 - (200 // BLOCK_SIZE) * BLOCK_SIZE
    assert engine.stats()["prefix_hit_blocks"] == 200 // BLOCK_SIZE


def test_the_same_prefix_under_another_salt_gets_no_hit(lm):
    engine = Engine(lm, BIG_KV)
    shared = system_prompt(lm, 200)
    run(engine, [request(1, shared + [40], salt="alice", max_tokens=1)])
    run(engine, [request(2, shared + [40], salt="bob", max_tokens=1)])
    assert engine.stats()["prefix_hit_blocks"] == 0 and engine.stats()["computed_tokens"] == 2 * 201


def test_a_resumed_request_with_the_cache_goes_on_as_the_undisturbed_run(lm):
    prompt = system_prompt(lm, 70)
    undisturbed = run(Engine(lm, BIG_KV, prefix_cache=False), [request(1, prompt, max_tokens=30, temperature=0.8,
                                                                       seed=3)])[1]
    engine = Engine(lm, BIG_KV)
    run(engine, [request(1, prompt, max_tokens=30, temperature=0.8, seed=3)])      # warms the cache
    resumed = run(engine, [request(2, prompt, max_tokens=30, temperature=0.8, seed=3, resume=undisturbed[:12])])[2]
    assert engine.stats()["prefix_hit_blocks"] > 0
    assert undisturbed[:12] + resumed == undisturbed


def test_a_request_after_one_cancelled_mid_prefill_gets_the_uncached_tokens(lm):
    prompt = system_prompt(lm, 150)
    expected = run(Engine(lm, BIG_KV, prefix_cache=False), [request(1, prompt)])[1]
    engine = Engine(lm, BIG_KV, max_batch_tokens=64)
    engine.add(request(1, prompt))
    engine.step()                                              # 64 of 150 tokens computed
    engine.cancel(1)
    assert run(engine, [request(2, prompt)])[2] == expected
    assert engine.stats()["prefix_hit_blocks"] == 64 // BLOCK_SIZE


def test_a_failed_step_drops_the_cached_blocks(lm):
    engine = Engine(lm, BIG_KV)
    run(engine, [request(1, system_prompt(lm, 100))])
    assert engine.stats()["prefix_cached_blocks"] > 0
    engine.fail_all("a step raised")
    assert engine.stats()["prefix_cached_blocks"] == 0


def test_the_cache_can_be_turned_off(lm):
    engine = Engine(lm, BIG_KV, prefix_cache=False)
    shared = system_prompt(lm, 100)
    run(engine, [request(1, shared + [40], max_tokens=1)])
    run(engine, [request(2, shared + [40], max_tokens=1)])
    assert engine.stats()["prefix_cache"] is False and engine.stats()["computed_tokens"] == 2 * 101


# --- through a real kernel -----------------------------------------------------------------------


def test_two_infers_sharing_a_system_prompt_through_the_kernel_give_the_text_of_an_uncached_engine(
        fresh_kernel, tiny_llama):
    """In float32, where the engine's outputs do not depend on how its work is batched (in bf16 a
    different chunking alone can change a token of the tiny random model, cache or not)."""
    k = fresh_kernel(extra=["--dtype", "float32"], env={"LLMOS_NO_SERVICES": "1"})
    lm = load(registry.resolve(tiny_llama), "cpu", "float32")
    system = lm.tokenizer.decode(system_prompt(lm, 300))
    chats = [[{"role": "system", "content": system}, {"role": "user", "content": question}]
             for question in ("Where is the kernel?", "Who owns the memory?")]
    prompts = [encode_prompt(lm, None, chat) for chat in chats]
    assert len(prompts[0]) > 300
    # Sampled, since the tiny model's greedy text ignores its prompt; every parameter given, none the model's default.
    sampling = {"max_tokens": 20, "temperature": 1.0, "seed": 5, "top_p": 0.95, "top_k": 0}
    expected: dict[int, str] = {}
    run(Engine(lm, BIG_KV, prefix_cache=False), [request(i, p, **sampling) for i, p in enumerate(prompts)], expected)
    with k.client() as c:
        texts = [c.infer(messages=chat, **sampling)["text"] for chat in chats]
    assert texts == [expected[0], expected[1]]
