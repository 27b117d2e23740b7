"""The built-in services on text they were not tuned on (issue 9 item 14).

The services were tuned on tests/data/ (a UK homeware shop); tests/data/heldout/ is a US bike shop
in another voice, written apart (see its README). The issue's own examples must come out right,
and each service's accuracy on the held-out set must stay above a floor: the figure measured
with benchmarks/services_eval.py when this was written, less a margin of about 10 points for
ties that a different CPU's float rounding may flip (the figures: benchmarks/README.md).
Scoring is the benchmark's own code, so the test and the table measure the same thing.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import services_eval as heldout  # noqa: E402
from llmos.services import nlp  # noqa: E402
from llmos.services.builtin.answers import candidate_sentences  # noqa: E402

# Held-out accuracy measured (benchmarks/results/services-eval.txt): kb 62.3%, support 80.0%,
# sentiment 69.4%, redact 90.0%. kb and sentiment ask every other case here, to keep this file
# short: 59.3% and 72.2% on those halves. Each floor is the figure asked here less 10 points.
FLOORS = {"kb": 0.49, "support": 0.70, "sentiment": 0.62, "redact": 0.80}


@pytest.fixture(scope="module")
def client(real_kernel):
    with real_kernel.client("services-heldout") as c:
        yield c


@pytest.fixture(scope="module")
def tuning_kb(client):
    client.svc_call("kb", "ingest_texts", {"kb": "heldout-tuning", "docs": heldout.tuning_set()["docs"]})
    yield "heldout-tuning"
    client.svc_call("kb", "drop", {"kb": "heldout-tuning"})


@pytest.fixture(scope="module")
def heldout_set():
    return heldout.heldout_set()


@pytest.fixture(scope="module")
def bike_kb(client, heldout_set):
    client.svc_call("kb", "ingest_texts", {"kb": "heldout-bikes", "docs": heldout_set["docs"]})
    yield "heldout-bikes"
    client.svc_call("kb", "drop", {"kb": "heldout-bikes"})


def chat(client, kb: str, conversation: str, message: str) -> dict:
    r = client.svc_call("support", "chat", {"conversation": conversation, "message": message, "kb": kb})
    client.svc_call("support", "end", {"conversation": conversation})
    return r


# -- reading documents, no model ---------------------------------------------------------------------

def test_a_table_row_is_read_as_a_sentence_that_names_its_columns():
    text = "## Prices\n\n| Method | Price |\n|---|---|\n| Ground | $9 |\n| **Overnight** | $45 |\n\nThat is all."
    assert nlp.markdown_sections(text)[0].paragraphs == ["Method: Ground; Price: $9.", "Method: Overnight; Price: $45.",
                                                         "That is all."]


def test_a_sentence_that_leans_back_is_quoted_with_the_one_before_and_a_question_is_no_answer():
    text = ("Shipping\nExpress delivery arrives the next working day. It costs £7.95 for any order. "
            "Q: Do you ship abroad? A: No, we only ship within the country for now.")
    by_sentence = {c.sentence: c for c in candidate_sentences([{"text": text}])}
    assert by_sentence["It costs £7.95 for any order."].quote.startswith("Express delivery arrives")
    assert not any(s.endswith("?") for s in by_sentence)
    answer = by_sentence["A: No, we only ship within the country for now."]
    assert answer.read_as.startswith("Q: Do you ship abroad?") and not answer.quote.startswith("Q:")


# -- the examples -------------------------------------------------------------------------

@pytest.mark.real_model
def test_kb_answers_how_much_express_shipping_costs_with_its_price(client, tuning_kb):
    r = client.svc_call("kb", "ask", {"kb": tuning_kb, "question": "How much does express shipping cost?"})
    assert r["found"] and "£7.95" in r["answer"], r["answer"]


@pytest.mark.real_model
def test_support_answers_how_long_a_lamp_can_be_returned_with_the_return_window(client, tuning_kb):
    r = chat(client, tuning_kb, "issue-lamp", "how long do I have to return a lamp?")
    assert "30 days" in r["reply"] and "48 hours" not in r["reply"] and not r["handoff"], r["reply"]


@pytest.mark.real_model
def test_support_meets_an_angry_message_with_an_apology_and_a_human_not_a_fact(client, tuning_kb):
    r = chat(client, tuning_kb, "issue-angry", "This is ridiculous, your service is terrible!")
    assert heldout.APOLOGY.search(r["reply"]) and r["handoff"] and r["citations"] == [], r["reply"]
    assert r["handoff_reason"] == "the customer is upset"


@pytest.mark.real_model
def test_sentiment_of_a_late_crushed_delivery_is_negative(client):
    text = "The delivery was late and the box was crushed. Very disappointed."
    assert client.svc_call("classify", "sentiment", {"text": text})["label"] == "negative"


# -- held-out accuracy floors ---------------------------------------------------------------------------

def assert_floor(service: str, results: list[tuple[bool, str]]) -> None:
    accuracy = sum(right for right, _ in results) / len(results)
    misses = "\n".join(detail for right, detail in results if not right)
    assert accuracy >= FLOORS[service], f"{service} held-out accuracy {accuracy:.1%} < {FLOORS[service]:.0%}:\n{misses}"


@pytest.mark.real_model
def test_kb_held_out_accuracy_stays_above_its_floor(client, bike_kb, heldout_set):
    assert_floor("kb", heldout.run_kb(client, bike_kb, heldout_set["kb"][::2]))      # every other: time


@pytest.mark.real_model
def test_support_held_out_accuracy_stays_above_its_floor(client, bike_kb, heldout_set):
    assert_floor("support", heldout.run_support(client, bike_kb, heldout_set["support"], "test"))


@pytest.mark.real_model
def test_sentiment_held_out_accuracy_stays_above_its_floor(client, heldout_set):
    assert_floor("sentiment", heldout.run_sentiment(client, heldout_set["sentiment"][::2]))    # 12 per label


@pytest.mark.real_model
def test_redact_held_out_accuracy_stays_above_its_floor(client, heldout_set):
    assert_floor("redact", heldout.run_redact(client, heldout_set["redact"]))
