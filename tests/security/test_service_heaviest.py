"""The heaviest legal call of every built-in service task, beside another user's calls (issue 25, item 3).

alice sends each task the largest arguments its schema allows, filled with the text that was worst
for its algorithms (runs of "!" and abbreviations for sentence splitting, a heading followed by
spaces, blank lines after a sign-off, numbers after cues for the phone matcher...); meanwhile bob
makes small calls. alice's call may end as she asked (ok) or at a limit of her own (ETIMEDOUT at her
deadline or its task's cost limit, EDQUOT, EINVAL); bob's calls all succeed in a few seconds, and
the service host is never restarted. Before, summarize's, redact's, moderate's and kb.ingest's held the
host's event loop until the kernel killed it, and every call in flight, bob's too, ended EIO.
"""

from __future__ import annotations

import threading
import time

import pytest

from harness import services_kernel
from llmos.userland import LLMOSError

MiB = 1 << 20
DEADLINE = 20          # alice's: a call that would run longer ends ETIMEDOUT, hers alone
CANARY_S = 10          # the longest one of bob's small calls may take


def fill(unit: str, size: int) -> str:
    return unit * (size // len(unit))


def loudest_wav(seconds: int = 60, rate: int = 48_000, channels: int = 2) -> bytes:
    """The longest, densest audio voice reads: 60 s of full-scale noise, 48 kHz stereo (11 MiB)."""
    import io
    import wave

    import numpy as np
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.random.default_rng(0).integers(-32768, 32767, seconds * rate * channels, dtype="<i2").tobytes())
    return buf.getvalue()


LOUDEST_WAV = loudest_wav()
SENTENCES = "Refunds are processed by the billing team within five days. Dr. Smith signed it!!! "
KB_NAME = "k" * 64
HEAVY = {
    ("summarize", "text"): {"text": fill("Dr. ", 8 * MiB) + fill(SENTENCES, 8 * MiB), "style": "bullets",
                            "sentences": 50, "mode": "abstractive", "chunk_chars": 500},
    ("classify", "labels"): {"text": fill("not bad! ", MiB), "labels": [f"{i:03d}" + "x" * 253 for i in range(64)],
                             "descriptions": {f"{i:03d}" + "x" * 253: "d" * 4096 for i in range(64)},
                             "examples": {f"{i:03d}" + "x" * 253: ["e" * 4096] * 13 for i in range(64)}},
    ("classify", "sentiment"): {"text": fill("not happy, never arrived. ", MiB), "lexicon": True},
    ("translate", "text"): {"text": fill("Le magasin ouvre à neuf heures. ", MiB), "target": "en", "source": "fr",
                            "best_effort": True},
    ("translate", "detect"): {"text": fill("de la le et ", MiB)},
    ("translate", "languages"): {},
    ("redact", "text"): {"text": fill("call me on 0123 ", 4 * MiB),
                         "regions": ["US", "GB", "FR", "DE", "IT", "ES", "NL", "BE", "CH", "AT", "SE", "NO", "DK",
                                     "FI", "IE", "PT"]},
    ("moderate", "text"): {"text": fill("GB12 A A A A A A A A A A A A A A call me on 0123 Regards,\n\n\n", MiB),
                           "threshold": 0.0},
    ("kb", "ingest"): {"kb": KB_NAME, "text": "# a" + " " * (MiB - 16) + "b\n\n" + fill("Dr. Who!!! ", 15 * MiB),
                       "chunk_chars": 100, "overlap": 5, "source": "s" * 512},
    ("kb", "ingest_texts"): {"kb": KB_NAME, "docs": [{"name": f"{i:05d}" + "n" * 507, "text": fill("Dr. Who. ", 2000)}
                                                     for i in range(10_000)], "chunk_chars": 100, "overlap": 5},
    ("kb", "ask"): {"kb": KB_NAME, "question": fill("when how much ", 4096), "k": 20, "min_score": -1.0,
                    "rephrase": True},
    ("kb", "search"): {"kb": KB_NAME, "query": fill("Dr. ", 4096), "k": 100},
    ("kb", "list"): {"kb": KB_NAME},
    ("voice", "transcribe"): {"audio": LOUDEST_WAV, "kb": KB_NAME},
    ("voice", "speak"): {"text": fill("Dr. Who!!! 1,234,567.89 ", 4096), "voice": "en-us+f3", "rate": 80},
    ("voice", "ask"): {"audio": LOUDEST_WAV, "kb": KB_NAME, "voice": "en-us+f3", "rate": 80},
    ("support", "chat"): {"conversation": "c" * 128, "message": fill("and what about it?! ", 16384), "kb": KB_NAME},
    ("support", "status"): {"conversation": "c" * 128, "history": True},
    ("support", "resolve"): {"conversation": "c" * 128},
    ("support", "end"): {"conversation": "c" * 128},
    ("kb", "drop"): {"kb": KB_NAME},
}
OWN_LIMITS = {"ETIMEDOUT", "EDQUOT", "EINVAL", "ENOENT", "EAGAIN"}


@pytest.fixture(scope="module")
def kernel(tmp_path_factory, tiny_llama, tiny_bert):
    k = services_kernel(tmp_path_factory.mktemp("svc-heavy"), tiny_bert, model=tiny_llama)
    yield k
    k.stop()


@pytest.fixture(scope="module")
def users(kernel):
    with kernel.client("console", caps=["admin", "ps", "mem", "svc"]) as op:
        keys = {name: op.user_add(name)["key_file"] for name in ("alice", "bob")}
        with kernel.client("alice-app", key=keys["alice"]) as alice, kernel.client("bob-app", key=keys["bob"]) as bob:
            bob.svc_call("classify", "sentiment", {"text": "warming up"})
            yield alice, bob
        for name in keys:
            op.user_remove(name)


def test_every_builtin_task_is_covered(users):
    _, bob = users
    listed = {(s["name"], t["name"]) for s in bob.svc_list()["services"] for t in s["tasks"]}
    assert listed == set(HEAVY)


@pytest.mark.parametrize("service,task", list(HEAVY), ids=[f"{s}.{t}" for s, t in HEAVY])
def test_the_heaviest_call_of_a_task_leaves_other_users_served(kernel, users, service, task):
    alice, bob = users
    with kernel.client("watcher") as c:
        before = c.svc_list()["host"]["restarts"]
    outcome: dict = {}

    def heavy() -> None:
        try:
            alice.svc_call(service, task, HEAVY[service, task], deadline=DEADLINE)
            outcome["errno"] = "ok"
        except LLMOSError as exc:
            outcome["errno"], outcome["message"] = exc.errno, exc.message

    t = threading.Thread(target=heavy)
    t.start()
    slowest, calls = 0.0, 0
    while t.is_alive() or calls < 2:
        started = time.monotonic()
        assert bob.svc_call("classify", "sentiment", {"text": "Thanks, that was quick."}, deadline=60)["label"]
        assert bob.svc_call("redact", "text", {"text": "mail bob@example.com"})["counts"] == {"EMAIL": 1}
        slowest, calls = max(slowest, time.monotonic() - started), calls + 1
        t.join(timeout=0.5)
    assert outcome["errno"] in OWN_LIMITS | {"ok"}, outcome
    assert slowest < CANARY_S, (slowest, outcome)
    with kernel.client("watcher") as c:
        assert c.svc_list()["host"]["restarts"] == before, outcome
