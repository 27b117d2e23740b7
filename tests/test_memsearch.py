"""Semantic memory: memwrite(embed=true) stores vectors durably, memsearch finds entries by meaning.

Correctness, not speed (examples/bench_memsearch.py times 100k entries): on 1k entries embedded
with MiniLM, memsearch must return exactly what a brute-force cosine ranking of the same vectors
returns, and stay exact through updates, deletes and a kernel restart. Errors use the tiny BERT.
"""

import asyncio

import numpy as np
import pytest

from harness import KernelProcess, errno_of
from llmos.userland import AsyncClient, LLMOSError

N = 1000
MODEL = "minilm-l6-v2"
COLOURS = "red green blue yellow black white orange purple silver golden".split()
THINGS = "bicycle teapot umbrella guitar lamp backpack kettle camera notebook sofa".split()
CITIES = "Oslo Lisbon Nairobi Lima Osaka Denver Cairo Perth Quebec Tallinn".split()


def entry_text(i: int) -> str:
    """1000 different sentences: every (colour, thing, city) once."""
    return f"A {COLOURS[i % 10]} {THINGS[i // 10 % 10]} was sold in {CITIES[i // 100]} for {10 + i} euros."



async def write_entries(socket: str, name: str, region: str, model: str, ids) -> None:
    async with AsyncClient(socket, name=name, timeout=None) as c:
        await c.load_model(model)           # load once, before the burst
        gate = asyncio.Semaphore(8)

        async def one(i):
            async with gate:
                await c.memwrite(region, f"k{i:04d}", entry_text(i), embed=True, model=model)

        await asyncio.gather(*(one(i) for i in ids))


def embed_all(c, model: str, texts: list[str]) -> np.ndarray:
    """The texts' vectors, embedded apart from how the writes embedded them (other batches)."""
    return np.concatenate([np.asarray(c.embed(texts[i:i + 256], model=model)["vectors"], dtype=np.float32)
                           for i in range(0, len(texts), 256)])


def brute_force(c, model: str, keys: list[str], vectors: np.ndarray, query: str, k: int) -> list[tuple[str, float]]:
    q = np.asarray(c.embed(query, model=model)["vectors"][0], dtype=np.float32)
    scores = vectors @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return [(keys[i], float(scores[i])) for i in order]


def assert_same_ranking(got: list[dict], expected: list[tuple[str, float]]) -> None:
    assert [r["score"] for r in got] == pytest.approx([s for _, s in expected], abs=1e-4)
    # keys must agree except where two scores tie within float noise
    for r, (key, score) in zip(got, expected):
        if r["key"] != key:
            assert abs(r["score"] - score) < 1e-4


@pytest.fixture(scope="module")
def mem_kernel(tmp_path_factory):
    state = tmp_path_factory.mktemp("memsearch-state")
    # float32: the brute force embeds in other batches than the writes did, and in bf16 (what "auto" picks
    # on a CPU with native bf16) a vector moves with its batch by up to ~1e-3, more than the ranking's tolerance
    k = KernelProcess(tmp_path_factory.mktemp("memsearch"), state_dir=state,
                      env={"LLMOS_NO_SERVICES": "1", "LLMOS_DTYPE": "float32"}).start()
    try:
        asyncio.run(write_entries(k.socket, "searcher", "big", MODEL, range(N)))
        yield k
    finally:
        k.stop()


def test_memsearch_matches_a_brute_force_ranking_on_1k_entries(mem_kernel):
    keys = [f"k{i:04d}" for i in range(N)]
    texts = [entry_text(i) for i in range(N)]
    with mem_kernel.client("searcher") as c:
        vectors = embed_all(c, MODEL, texts)       # once: the ranking of every query below reads them
        for query in ("a red bicycle in Oslo", "cheap teapots", entry_text(17), "camera sold in Peru", "music"):
            got = c.memsearch("big", query, k=10)
            assert got["searched"] == N and got["model"] == MODEL
            assert_same_ranking(got["results"], brute_force(c, MODEL, keys, vectors, query, 10))
        exact = c.memsearch("big", entry_text(17), k=1)["results"][0]
        assert exact["key"] == "k0017" and exact["value"] == entry_text(17) and exact["score"] > 0.999


def test_updates_and_deletes_keep_the_index_exact(mem_kernel):
    with mem_kernel.client("searcher") as c:
        c.memsearch("big", "warm the index")
        c.memwrite("big", "k0003", "The submarine surfaced near the glacier at dawn.", embed=True)
        c.memwrite("big", "k0004", "no vector any more")                     # embed=false drops the vector
        c.memdel("big", "k0005")
        hits = c.memsearch("big", "a submarine by the ice", k=3)
        assert hits["searched"] == N - 2
        assert hits["results"][0]["key"] == "k0003"
        every = {r["key"] for r in c.memsearch("big", entry_text(4), k=100)["results"]}
        assert "k0004" not in every and "k0005" not in every
        assert c.memread("big", "k0004")["value"] == "no vector any more"


def test_vectors_survive_a_kernel_restart(mem_kernel, tmp_path):
    with mem_kernel.client("searcher") as c:
        c.memwrite("durable", "a", "The lazy dog sleeps by the fire.", embed=True)
        c.memwrite("durable", "b", "Questions and answers about taxes.", embed=True)
        before = c.memsearch("durable", "a sleepy puppy", k=2)
    mem_kernel.stop()
    try:
        with KernelProcess(tmp_path / "restarted", state_dir=mem_kernel.state_dir,
                           env={"LLMOS_NO_SERVICES": "1", "LLMOS_DTYPE": "float32"}) as k2:
            with k2.client("searcher") as c:
                after = c.memsearch("durable", "a sleepy puppy", k=2)
                assert c.memsearch("big", entry_text(17), k=1)["results"][0]["key"] == "k0017"
        assert [r["key"] for r in after["results"]] == [r["key"] for r in before["results"]] == ["a", "b"]
        assert [r["score"] for r in after["results"]] == pytest.approx([r["score"] for r in before["results"]], abs=1e-5)
    finally:
        mem_kernel.start()


def test_memsearch_sees_the_regions_of_its_principal_and_a_missing_one_is_enoent(mem_kernel):
    with mem_kernel.client("another-program") as other:   # the same principal: the same regions
        assert other.memsearch("big", entry_text(17), k=1)["results"][0]["key"] == "k0017"
        assert errno_of(other.memsearch, "no-such-region", "fox") == "ENOENT"


def test_only_entries_written_with_embed_are_searched(mem_kernel, tiny_bert):
    with mem_kernel.client("mixed") as c:
        c.memwrite("mixed", "plain", "the quick brown fox")
        assert c.memsearch("mixed", "fox", model=tiny_bert) == {"region": "mixed", "model": tiny_bert,
                                                                "searched": 0, "results": []}
        c.memwrite("mixed", "vec", "the quick brown fox", embed=True, model=tiny_bert)
        assert [r["key"] for r in c.memsearch("mixed", "fox", k=5, model=tiny_bert)["results"]] == ["vec"]


def test_embed_needs_text_and_a_loadable_embedding_model(mem_kernel, tiny_bert, tiny_llama):
    with mem_kernel.client("picky") as c:
        assert errno_of(c.memwrite, "p", "k", b"\x00bytes", embed=True, model=tiny_bert) == "EINVAL"
        assert errno_of(c.memwrite, "p", "k", "text", embed=True, model="no-such-model") == "ENOENT"
        assert errno_of(c.memwrite, "p", "k", "text", embed=True, model=tiny_llama) == "EINVAL"
        with pytest.raises(LLMOSError):
            c.memread("p", "k")            # nothing was written by the failed calls


@pytest.mark.real_model
def test_memsearch_finds_entries_by_meaning_with_minilm(real_kernel):
    facts = {"paris": "Paris is the capital of France.", "boil": "Water boils at 100 degrees Celsius at sea level.",
             "py": "Python is a programming language created by Guido van Rossum.",
             "moon": "The Moon orbits the Earth roughly every 27 days.",
             "bank": "You can open a savings account at the bank on Main Street."}
    with real_kernel.client("meaning") as c:
        for key, text in facts.items():
            c.memwrite("facts", key, text, embed=True)
        for query, key in (("What is the French capital city?", "paris"), ("At what temperature does water boil?", "boil"),
                           ("who invented a coding language", "py"), ("How long is a lunar orbit?", "moon"),
                           ("where can I put my money away", "bank")):
            assert c.memsearch("facts", query, k=1)["results"][0]["key"] == key
        c.memdel("facts")
