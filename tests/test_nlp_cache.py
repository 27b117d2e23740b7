"""The service host's embedding cache: one host serves every principal, so a caller's texts are cached
under its own principal (a hit on another tenant's text would tell, by its speed, what that tenant
asked about), and the cache has a bound."""

from __future__ import annotations

import numpy as np

from llmos.services import nlp


class CountingKernel:
    """The embed syscall as the host's client makes it, counting the texts it is asked for."""

    def __init__(self):
        self.asked: list[str] = []

    async def embed(self, texts, model=None):
        self.asked += texts
        return {"vectors": [[float(len(t)), 1.0] for t in texts]}


async def test_a_text_cached_for_one_principal_is_embedded_again_for_another(monkeypatch):
    monkeypatch.setattr(nlp, "_CACHE", {})
    kernel = CountingKernel()
    await nlp.embed(kernel, ["our refund policy"], cache="alice")
    await nlp.embed(kernel, ["our refund policy"], cache="alice")
    assert kernel.asked == ["our refund policy"]          # alice's second ask is a hit
    vectors = await nlp.embed(kernel, ["our refund policy"], cache="bob")
    assert kernel.asked == ["our refund policy"] * 2      # bob's is not
    assert np.array_equal(vectors, np.array([[17.0, 1.0]], dtype=np.float32))


async def test_the_cache_never_holds_more_than_its_bound(monkeypatch):
    monkeypatch.setattr(nlp, "_CACHE", {})
    monkeypatch.setattr(nlp, "_CACHE_MAX", 10)
    kernel = CountingKernel()
    for i in range(7):
        await nlp.embed(kernel, [f"text {i}-{j}" for j in range(3)], cache="alice")
        assert len(nlp._CACHE) <= 10
    assert len(kernel.asked) == 21
