"""The built-in services: structure and errors on the tiny model, answers checked on the real models.

Tiny-model tests boot a kernel whose services embed with the tiny BERT: they check shapes,
arguments and errnos, not meaning. Real-model tests share the session's `real_kernel`
(SmolLM2-135M-Instruct, with MiniLM for embeddings) and check content.
"""

import re
from pathlib import Path

import pytest

from harness import KernelProcess, errno_of, raised
from llmos.services.builtin.kb import read_documents

DATA = Path(__file__).resolve().parent / "data"
KB_DIR = DATA / "kb"
TEXT = (DATA / "kb" / "shipping.md").read_text() + "\n\n" + (DATA / "kb" / "returns.md").read_text()



@pytest.fixture(scope="module")
def tiny_svc(tmp_path_factory, tiny_llama, tiny_bert):
    k = KernelProcess(tmp_path_factory.mktemp("builtin-tiny"), model=tiny_llama,
                      env={"LLMOS_SERVICES_EMBED_MODEL": tiny_bert}).start()
    yield k
    k.stop()


@pytest.fixture
def tc(tiny_svc, request):
    with tiny_svc.client(request.node.name[:60]) as c:
        yield c


# -- structure and errors, tiny model --------------------------------------------------------------

def test_summarize_returns_sentences_of_the_text_in_each_style(tc):
    for style, count in (("one_line", 1), ("bullets", 3), ("paragraph", 2)):
        r = tc.svc_call("summarize", "text", {"text": TEXT, "style": style, "sentences": count})
        assert r["style"] == style and len(r["sentences"]) == count and r["chunks"] >= 1
        for s in r["sentences"]:
            assert " ".join(TEXT[s["start"]:s["end"]].split()) == s["text"]
        if style == "bullets":
            assert r["text"].count("\n- ") == count - 1 and r["text"].startswith("- ")


def test_summarize_maps_over_chunks_of_a_long_text_and_streams(tc):
    long_text = "\n\n".join(TEXT for _ in range(6))
    stream = tc.svc_stream("summarize", "text", {"text": long_text, "style": "bullets", "chunk_chars": 1000})
    deltas = list(stream)
    assert stream.result["chunks"] > 5 and "".join(deltas) == stream.result["text"] and len(deltas) == 5


def test_summarize_rejects_an_unknown_style(tc):
    assert errno_of(tc.svc_call, "summarize", "text", {"text": "x", "style": "haiku"}) == "EINVAL"


def test_classify_gives_a_confidence_per_label_that_sums_to_one(tc):
    r = tc.svc_call("classify", "labels", {"text": "my card was charged twice", "labels": ["billing", "shipping"],
                                           "descriptions": {"billing": "payments and charges"}})
    assert set(r["scores"]) == {"billing", "shipping"} and abs(sum(r["scores"].values()) - 1) < 1e-3
    assert r["label"] in ("billing", "shipping") and r["confidence"] == max(r["scores"].values())
    s = tc.svc_call("classify", "sentiment", {"text": "fine"})
    assert set(s["scores"]) == {"positive", "negative", "neutral"}


@pytest.mark.parametrize("args", [{"labels": ["only-one"]}, {"labels": ["a", "a"]},
                                  {"labels": ["a", "b"], "descriptions": {"c": "not a label"}}])
def test_classify_rejects_bad_labels(tc, args):
    assert errno_of(tc.svc_call, "classify", "labels", dict(args, text="hello")) == "EINVAL"


def test_translate_detects_and_refuses_unknown_languages(tc):
    assert tc.svc_call("translate", "detect", {"text": "Der Laden ist heute geschlossen."})["language"] == "de"
    assert errno_of(tc.svc_call, "translate", "text", {"text": "hello", "target": "klingon"}) == "EINVAL"
    same = tc.svc_call("translate", "text", {"text": "The shop is open today.", "target": "en"})
    assert same["text"] == "The shop is open today." and same["reliable"]


def test_translate_of_an_unverified_model_says_so(tc):
    r = tc.svc_call("translate", "text", {"text": "Le magasin est ouvert.", "target": "en"})
    assert r["source"] == "fr" and r["reliable"] is False and r["warnings"]


def test_redact_replaces_checked_patterns_with_typed_placeholders(tc):
    text = "Mail jo@example.com or call +44 20 7946 0958; card 4111 1111 1111 1111, not 4111 1111 1111 1112."
    r = tc.svc_call("redact", "text", {"text": text})
    assert r["text"] == "Mail [EMAIL_1] or call [PHONE_1]; card [CARD_1], not 4111 1111 1111 1112."
    assert [(f["type"], text[f["start"]:f["end"]]) for f in r["findings"]] == [
        ("EMAIL", "jo@example.com"), ("PHONE", "+44 20 7946 0958"), ("CARD", "4111 1111 1111 1111")]
    assert errno_of(tc.svc_call, "redact", "text", {"text": "x", "types": ["DNA"]}) == "EINVAL"


def test_redact_reads_national_phone_numbers_in_the_regions_asked_for(tc):
    text = "Appelez le 01 42 68 53 00."
    assert tc.svc_call("redact", "text", {"text": text})["findings"] == []          # not a US or UK number
    assert tc.svc_call("redact", "text", {"text": text, "regions": ["FR"]})["text"] == "Appelez le [PHONE_1]."
    assert errno_of(tc.svc_call, "redact", "text", {"text": "x", "regions": ["XX"]}) == "EINVAL"


def test_redact_takes_bare_digits_for_a_phone_only_after_a_cue_and_then_everywhere(tc):
    assert tc.svc_call("redact", "text", {"text": "Order 2125550199 shipped."})["findings"] == []
    r = tc.svc_call("redact", "text", {"text": "Order 2125550199 shipped; call me on 2125550199."})
    assert r["text"] == "Order [PHONE_1] shipped; call me on [PHONE_1]."


def test_moderate_reports_every_category_with_reasons(tc):
    r = tc.svc_call("moderate", "text", {"text": "Click here to claim your free prize!!! www.a.example www.b.example",
                                         "threshold": 1.0})   # the tiny BERT finds everything alike
    assert set(r["categories"]) == {"hate", "harassment", "violence", "self_harm", "sexual", "spam", "pii"}
    assert r["flagged_categories"] == ["spam"] and "click here" in r["categories"]["spam"]["reason"].lower()


def test_kb_ingests_lists_answers_and_drops(tc):
    r = tc.svc_call("kb", "ingest_texts", {"kb": "docs", "docs": read_documents(str(KB_DIR))})
    assert {d["source"] for d in r["documents"]} == {p.name for p in KB_DIR.iterdir()} and r["chunks"] > 20
    listed = tc.svc_call("kb", "list", {"kb": "docs"})
    assert listed["chunks"] == r["chunks"]
    a = tc.svc_call("kb", "ask", {"kb": "docs", "question": "How long is the reset link valid?", "min_score": -1})
    assert a["found"] and a["citations"] and "#" in a["citations"][0]["key"] and a["quote"] in a["answer"]
    assert tc.svc_call("kb", "drop", {"kb": "docs", "source": "stores.txt"})["deleted"] >= 1
    assert tc.svc_call("kb", "list", {"kb": "docs"})["chunks"] < r["chunks"]
    tc.svc_call("kb", "drop", {"kb": "docs"})
    assert errno_of(tc.svc_call, "kb", "ask", {"kb": "docs", "question": "anything?"}) == "ENOENT"


def test_kb_reingesting_a_source_replaces_it(tc):
    tc.svc_call("kb", "ingest", {"kb": "one", "text": "# A\n\n" + "First fact. " * 200, "source": "doc"})
    tc.svc_call("kb", "ingest", {"kb": "one", "text": "# A\n\nOnly fact.", "source": "doc"})
    assert tc.svc_call("kb", "list", {"kb": "one"})["documents"] == [{"source": "doc", "chunks": 1}]
    tc.svc_call("kb", "drop", {"kb": "one"})


@pytest.mark.parametrize("args, errno", [({"kb": "x"}, "EINVAL"), ({"kb": "x", "text": "a", "path": "/tmp"}, "EINVAL"),
                                         ({"kb": "bad name!", "text": "a"}, "EINVAL"),
                                         ({"kb": "x", "path": "/no/such/folder"}, "EACCES")])
def test_kb_ingest_errors(tc, args, errno):
    assert errno_of(tc.svc_call, "kb", "ingest", args) == errno


def test_a_knowledge_base_belongs_to_the_principal_not_the_program(tiny_svc):
    """Every program of one principal sees its kbs (other principals do not: tests/security/test_tenant_services.py)."""
    with tiny_svc.client("owner-program") as a, tiny_svc.client("other-program") as b:
        a.svc_call("kb", "ingest", {"kb": "mine", "text": "The secret code is 1234."})
        assert b.svc_call("kb", "list", {"kb": "mine"})["chunks"] == 1
        b.svc_call("kb", "drop", {"kb": "mine"})
        assert errno_of(a.svc_call, "kb", "ask", {"kb": "mine", "question": "code?"}) == "ENOENT"


def test_support_keeps_the_conversation_and_hands_off_on_request(tc):
    tc.svc_call("kb", "ingest_texts", {"kb": "help", "docs": read_documents(str(KB_DIR))})
    r = tc.svc_call("support", "chat", {"conversation": "t1", "message": "hello", "kb": "help"})
    assert not r["handoff"] and r["turn"] == 1
    r = tc.svc_call("support", "chat", {"conversation": "t1", "message": "I want to talk to a human please"})
    assert r["handoff"] and r["handoff_reason"] == "the customer asked for a human"
    status = tc.svc_call("support", "status", {"conversation": "t1", "history": True})
    assert status["handoff"] and status["turns"] == 2 and len(status["history"]) == 4
    assert tc.svc_call("support", "resolve", {"conversation": "t1"})["handoff"] is False
    tc.svc_call("support", "end", {"conversation": "t1"})
    assert errno_of(tc.svc_call, "support", "status", {"conversation": "t1"}) == "ENOENT"
    assert errno_of(tc.svc_call, "support", "chat", {"conversation": "t2", "message": "hi"}) == "EINVAL"


# -- content, real models ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real(real_kernel):
    with real_kernel.client("builtin-real") as c:
        c.svc_call("kb", "ingest_texts", {"kb": "lumora", "docs": read_documents(str(KB_DIR))})
        yield c
        c.svc_call("kb", "drop", {"kb": "lumora"})


@pytest.mark.real_model
@pytest.mark.parametrize("question, fact, source", [
    ("How long is a password reset link valid?", "30 minutes", "account.md"),
    ("Who pays customs duties on international orders?", "paid by the customer", "shipping.md"),
    ("What are the store opening hours on Sunday?", "10 am to 4 pm", "stores.txt"),
])
def test_kb_ask_quotes_the_right_fact_and_cites_its_source(real, question, fact, source):
    r = real.svc_call("kb", "ask", {"kb": "lumora", "question": question})
    assert r["found"] and fact in r["answer"]
    assert r["citations"][0]["source"] == source and r["citations"][0]["key"].startswith(source + "#")


@pytest.mark.real_model
def test_kb_says_it_does_not_know_when_nothing_matches(real):
    r = real.svc_call("kb", "ask", {"kb": "lumora", "question": "What is the capital of Australia?"})
    assert not r["found"] and "don't know" in r["answer"] and r["citations"] == []


@pytest.mark.real_model
def test_kb_rephrased_answers_keep_the_facts(real):
    r = real.svc_call("kb", "ask", {"kb": "lumora", "question": "How much does standard delivery cost?",
                                    "rephrase": True})
    assert "3.95" in r["answer"]


@pytest.mark.real_model
@pytest.mark.parametrize("text, label", [
    ("Thank you so much, everything arrived perfectly and your team was wonderful!", "positive"),
    ("This is terrible, the blender broke on day one and nobody answers my emails.", "negative"),
    ("What time does the Leeds store open on Saturday?", "neutral"),
])
def test_sentiment_of_clear_examples(real, text, label):
    assert real.svc_call("classify", "sentiment", {"text": text})["label"] == label


@pytest.mark.real_model
def test_zero_shot_labels_pick_the_topic(real):
    r = real.svc_call("classify", "labels", {"text": "I was charged twice for the same order",
                                             "labels": ["billing", "delivery", "account login"]})
    assert r["label"] == "billing"


@pytest.mark.real_model
def test_redact_finds_an_email_and_a_card(real):
    text = "Hi, I'm Maria Lopez, email maria.lopez@example.org, card 5555 5555 5555 4444, exp 12/27."
    r = real.svc_call("redact", "text", {"text": text})
    assert "maria.lopez@example.org" not in r["text"] and "5555 5555 5555 4444" not in r["text"]
    assert {"EMAIL", "CARD", "NAME"} <= set(r["counts"]) and "[EMAIL_1]" in r["text"] and "[CARD_1]" in r["text"]


@pytest.mark.real_model
def test_summary_bullets_come_from_the_text(real):
    r = real.svc_call("summarize", "text", {"text": TEXT, "style": "bullets", "sentences": 3})
    bullets = r["text"].split("\n")
    assert len(bullets) == 3 and all(b.startswith("- ") for b in bullets)
    flat = " ".join(TEXT.split())
    assert all(b[2:] in flat for b in bullets)


@pytest.mark.real_model
def test_abstractive_summary_is_the_models_rewrite_and_keeps_to_the_source(real):
    extract = real.svc_call("summarize", "text", {"text": TEXT, "style": "one_line"})["text"]
    r = real.svc_call("summarize", "text", {"text": TEXT, "style": "one_line", "mode": "abstractive"})
    assert not r["fallback"] and r["text"] != extract and "\n" not in r["text"]
    assert len(set(re.findall(r"[a-z]+", r["text"].lower())) - set(re.findall(r"[a-z]+", TEXT.lower()))) < 6


@pytest.mark.real_model
def test_translate_refuses_what_the_default_model_cannot_do(real):
    error = raised(real.svc_call, "translate", "text", {"text": "Ma commande n'est pas encore arrivée.", "target": "en"})
    assert error.errno == "EINVAL" and "best_effort" in error.message
    draft = real.svc_call("translate", "text", {"text": "Le magasin est ouvert.", "target": "en", "best_effort": True})
    assert draft["reliable"] is False and draft["source"] == "fr"
    assert real.svc_call("translate", "languages", {})["pairs"] == []


@pytest.mark.real_model
def test_moderate_flags_harm_and_passes_a_normal_message(real):
    assert real.svc_call("moderate", "text", {"text": "I don't want to live anymore."})["flagged_categories"] == ["self_harm"]
    assert "harassment" in real.svc_call("moderate", "text", {"text": "You are a pathetic idiot."})["flagged_categories"]
    assert not real.svc_call("moderate", "text", {"text": "Can I change my delivery slot to Friday?"})["flagged"]


@pytest.mark.real_model
def test_support_answers_from_the_kb_follows_up_and_hands_off(real):
    chat = lambda m: real.svc_call("support", "chat", {"conversation": "real-1", "message": m, "kb": "lumora"})
    r = chat("How many days do I have to return something?")
    assert "30 days" in r["reply"] and r["citations"][0]["source"] == "returns.md" and not r["handoff"]
    r = chat("and for Christmas gifts?")
    assert "31 January" in r["reply"]
    r = chat("Do you sell electric cars?")
    assert r["handoff"] and r["handoff_reason"] == "no answer in the knowledge base"
    assert real.svc_call("support", "status", {"conversation": "real-1"})["handoff"]
    real.svc_call("support", "end", {"conversation": "real-1"})
