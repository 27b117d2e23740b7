"""Noisy neighbours on one driver (issue 25, items 2 and 3), through a real kernel: one process sends a
poisoned or the heaviest legal request while another streams a generation (the canary). The canary
must finish with the text of a quiet run, and the driver must not be restarted.

Timing on a shared 2-core machine is noisy, so these assert on completion, texts and restarts only.
"""

from __future__ import annotations

import threading

import pytest

from llmos.specs import SYSCALLS
from llmos.specs.protocol import MAX_FRAME_BYTES
from llmos.userland import LLMOSError
from llmos.userland.testing import KernelProcess, wait_until

pytestmark = pytest.mark.timeout(900)   # beside_a_canary waits up to 600 s for the heaviest attack
CANARY = dict(prompt="The quick brown fox", max_tokens=250, temperature=0.7, top_p=0.95, seed=11)
ASCII = ("An operating system shares one machine among many programs; a kernel owns the resources "
         "and drivers talk to devices. Paris is the capital of France, Rome is the capital of Italy. ")


@pytest.fixture(scope="module")
def k(tmp_path_factory, tiny_llama, tiny_bert):
    kp = KernelProcess(tmp_path_factory.mktemp("neighbours"), model=tiny_llama).start()
    with kp.client("warm-up") as c:
        c.embed(input="load the embedding model", model=tiny_bert)     # loaded before anyone measures
    yield kp
    kp.stop()


@pytest.fixture(scope="module")
def quiet_text(k) -> str:
    with k.client("quiet") as c:
        return c.infer(**CANARY)["text"]


def restarts(k) -> tuple[int, list]:
    """The drivers' restarts so far, and their process ids (a watchdog's restart changes both)."""
    with k.client("stats") as c:
        return sum(d["restarts"] for d in c.call("stats")["devices"]), [d["os_pid"] for d in c.devices()]


def beside_a_canary(k, attack):
    """Run attack(client) once the canary's stream has begun; (the canary's text or its error, the
    attack's result or its error)."""
    out: dict = {}
    with k.client("canary") as victim, k.client("neighbour") as neighbour:
        stream = victim.stream(**CANARY)
        deltas = iter(stream)
        text = next(deltas)       # the canary is in the batch now

        def attacker():
            try:
                out["attack"] = attack(neighbour)
            except LLMOSError as exc:
                out["attack"] = exc

        thread = threading.Thread(target=attacker)
        thread.start()
        try:
            text += "".join(deltas)
            out["canary"] = text
        except LLMOSError as exc:
            out["canary"] = exc
        thread.join(timeout=600)
    return out["canary"], out.get("attack")


def crashes(k) -> list[dict]:
    return k.events("driver.crashed")


def test_a_poisoned_generation_fails_at_most_itself_and_the_canary_writes_its_quiet_text(k, quiet_text):
    """top_k 2**63 passed the kernel's range and overflowed the sampler's int64 column: before, the step
    failed and every generation on the engine ended EIO, the canary's included."""
    before = restarts(k)
    canary, poison = beside_a_canary(k, lambda c: c.infer(prompt="hi", max_tokens=8, temperature=0.7, top_k=2**63))
    assert canary == quiet_text
    assert isinstance(poison, dict) or poison.errno in ("EINVAL", "EIO")
    assert restarts(k) == before and not crashes(k)


def heaviest_embed_input() -> list[str]:
    """embed's maxima: as many texts as it takes, as long as one frame carries them all."""
    arg = SYSCALLS["embed"].args["input"]
    count = getattr(arg, "max_items", None) or 1024
    room = (MAX_FRAME_BYTES - (1 << 20)) // count - 16
    length = min(room, getattr(arg, "max_len", None) or room)
    text = (ASCII * (length // len(ASCII) + 1))[:length]
    return [f"{i} {text}"[:length] for i in range(count)]


def test_the_heaviest_legal_embed_beside_a_canary_restarts_no_driver(k, tiny_bert, quiet_text):
    """Before: 1024 texts of 32 KB each took the driver more than the watchdog's two ping periods to
    tokenize, all in one go, so the kernel killed and restarted it and the canary ended EIO."""
    texts = heaviest_embed_input()
    before = restarts(k)
    canary, result = beside_a_canary(k, lambda c: c.embed(input=texts, model=tiny_bert))
    assert not isinstance(result, Exception), result
    assert len(result["vectors"]) == len(texts) and result["dim"] == len(result["vectors"][-1])
    assert canary == quiet_text
    assert restarts(k) == before and not crashes(k)


def heaviest_score_texts(tiny_llama) -> list[str]:
    """score's maxima: 64 texts, each as many tokens as the model's context takes, within 262,144 characters."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    count, chars = 64, 262144 // 64
    texts = []
    for i in range(count):
        text = (f"{i} " + ASCII * (chars // len(ASCII) + 1))[:chars]
        while len(tok(text).input_ids) > 512:
            text = text[:int(len(text) * 0.97)]
        texts.append(text)
    return texts


def test_the_heaviest_legal_score_beside_a_canary_restarts_no_driver(k, tiny_llama, quiet_text):
    texts = heaviest_score_texts(tiny_llama)
    before = restarts(k)
    canary, result = beside_a_canary(k, lambda c: c.score(texts=texts))
    assert not isinstance(result, Exception), result
    assert len(result["nll"]) == len(texts) and max(result["tokens"]) >= 400
    assert canary == quiet_text
    assert restarts(k) == before and not crashes(k)
