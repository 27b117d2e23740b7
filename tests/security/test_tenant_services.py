"""Services keep each tenant's data in that tenant's namespace: two users on a tcp kernel with services.

What a service stores for a caller (a kb's chunks, a support conversation) is written through
`for_call`, so it lives in the caller's principal's namespace and counts against its quota. The
users here run the same program name (the CLI's `llmos-svc`), as the attack did.
"""

from __future__ import annotations

import pytest

from harness import errno_of, raised, services_kernel

PROGRAM = "llmos-svc"
DOC = "# Refunds\n\nThe secret refund code is PELICAN-42. Refunds take five working days."


@pytest.fixture(scope="module")
def svc_tcp_kernel(tmp_path_factory, tiny_bert):
    k = services_kernel(tmp_path_factory.mktemp("tenant-svc"), tiny_bert)
    yield k
    k.stop()


@pytest.fixture(scope="module")
def users(svc_tcp_kernel):
    """alice and bob (default caps), and carol whose memory quota holds little."""
    with svc_tcp_kernel.client("console", caps=["admin", "ps", "mem", "svc"]) as op:
        files = {name: op.user_add(name)["key_file"] for name in ("alice", "bob")}
        files["carol"] = op.user_add("carol", quotas={"mem_bytes": 1500})["key_file"]
        yield files
        for name in files:
            op.user_remove(name)


@pytest.fixture
def alice(svc_tcp_kernel, users):
    with svc_tcp_kernel.client(PROGRAM, key=users["alice"]) as c:
        yield c


@pytest.fixture
def bob(svc_tcp_kernel, users):
    with svc_tcp_kernel.client(PROGRAM, key=users["bob"]) as c:
        yield c


def test_another_users_kb_of_the_same_name_is_not_found(alice, bob):
    alice.svc_call("kb", "ingest_texts", {"kb": "private", "docs": [{"name": "refunds.md", "text": DOC}]})
    try:
        for task, args in [("ask", {"question": "What is the refund code?"}), ("search", {"query": "refund code"}),
                           ("list", {}), ("drop", {})]:
            error = raised(bob.svc_call, "kb", task, {"kb": "private", **args})
            assert error.errno == "ENOENT", (task, error)
            assert "PELICAN" not in error.message
        answer = alice.svc_call("kb", "ask", {"kb": "private", "question": "What is the refund code?"})
        assert "PELICAN-42" in answer["answer"]       # bob's drop took nothing away
    finally:
        alice.svc_call("kb", "drop", {"kb": "private"})


def test_each_user_gets_a_kb_of_its_own_under_one_name(alice, bob):
    alice.svc_call("kb", "ingest_texts", {"kb": "help", "docs": [{"name": "a.md", "text": DOC}]})
    bob.svc_call("kb", "ingest_texts", {"kb": "help", "docs": [{"name": "b.md", "text": "# Hours\n\nOpen at nine."}]})
    try:
        assert [d["source"] for d in alice.svc_call("kb", "list", {"kb": "help"})["documents"]] == ["a.md"]
        assert [d["source"] for d in bob.svc_call("kb", "list", {"kb": "help"})["documents"]] == ["b.md"]
    finally:
        alice.svc_call("kb", "drop", {"kb": "help"})
        bob.svc_call("kb", "drop", {"kb": "help"})


def test_every_program_of_a_principal_sees_its_kb(svc_tcp_kernel, users, alice):
    alice.svc_call("kb", "ingest_texts", {"kb": "shared-by-me", "docs": [{"name": "refunds.md", "text": DOC}]})
    try:
        with svc_tcp_kernel.client("another-app", key=users["alice"]) as other:
            assert other.svc_call("kb", "list", {"kb": "shared-by-me"})["chunks"] >= 1
    finally:
        alice.svc_call("kb", "drop", {"kb": "shared-by-me"})


def test_a_kb_is_in_its_owners_namespace_and_no_one_elses(alice, bob):
    alice.svc_call("kb", "ingest_texts", {"kb": "mine", "docs": [{"name": "refunds.md", "text": DOC}]})
    try:
        keys = alice.memread("svc/kb/mine")["keys"]
        assert keys and all(k.startswith("refunds.md#") for k in keys)
        assert errno_of(bob.memread, "svc/kb/mine") == "ENOENT"
    finally:
        alice.svc_call("kb", "drop", {"kb": "mine"})


def test_a_kb_ingest_counts_against_the_callers_memory_quota(svc_tcp_kernel, users):
    with svc_tcp_kernel.client(PROGRAM, key=users["carol"]) as carol:
        big = "\n\n".join(f"Paragraph {i}: " + "refunds are processed by the billing team. " * 6 for i in range(20))
        error = raised(carol.svc_call, "kb", "ingest_texts", {"kb": "big", "docs": [{"name": "big.md", "text": big}]})
        assert error.errno == "EDQUOT" and "carol" in error.message
        # what fits is still carol's to store: the quota is hers, not the shared service host's
        carol.svc_call("kb", "ingest_texts", {"kb": "small", "docs": [{"name": "s.md", "text": "Open at nine."}]})
        carol.svc_call("kb", "drop", {"kb": "small"})
        carol.svc_call("kb", "drop", {"kb": "big"})


def test_another_users_support_conversation_is_not_found(alice, bob):
    alice.svc_call("kb", "ingest_texts", {"kb": "desk", "docs": [{"name": "refunds.md", "text": DOC}]})
    try:
        alice.svc_call("support", "chat", {"conversation": "case-1", "message": "How long do refunds take?",
                                           "kb": "desk"})
        assert errno_of(bob.svc_call, "support", "status", {"conversation": "case-1"}) == "ENOENT"
        assert errno_of(bob.svc_call, "support", "end", {"conversation": "case-1"}) == "ENOENT"
        status = alice.svc_call("support", "status", {"conversation": "case-1", "history": True})
        assert status["conversation"] == "case-1"
        alice.svc_call("support", "end", {"conversation": "case-1"})
    finally:
        alice.svc_call("kb", "drop", {"kb": "desk"})


@pytest.mark.parametrize("call,args", [("memwrite", ("r", "k", "v")), ("memread", ("r",)), ("memdel", ("r",)),
                                       ("embed", ("hello",)), ("score", ("hello",))])
def test_only_the_service_host_may_act_for_a_call(alice, call, args):
    assert errno_of(getattr(alice, call), *args, for_call=1) == "EPERM"


def test_voice_hears_only_the_callers_own_kb(alice, bob):
    """bob naming alice's kb in voice.transcribe or voice.ask gets ENOENT, never her kb's words."""
    import importlib.util
    if importlib.util.find_spec("pocketsphinx") is None or importlib.util.find_spec("espeakng_loader") is None:
        pytest.skip("voice needs the pocketsphinx and espeakng-loader wheels")
    from llmos.services.speech.audio import encode_wav
    from llmos.services.speech.espeak import ESPEAK
    clip = encode_wav(*ESPEAK.synthesize("What is the refund code?"))
    alice.svc_call("kb", "ingest_texts", {"kb": "spoken", "docs": [{"name": "refunds.md", "text": DOC}]})
    try:
        for task in ("transcribe", "ask"):
            error = raised(bob.svc_call, "voice", task, {"audio": clip, "kb": "spoken"}, deadline=120)
            assert error.errno == "ENOENT" and "PELICAN" not in error.message, (task, error)
        mine = alice.svc_call("voice", "transcribe", {"audio": clip, "kb": "spoken"}, deadline=120)
        assert mine["model"] == "kb" and mine["vocabulary"] > 0
    finally:
        alice.svc_call("kb", "drop", {"kb": "spoken"})
