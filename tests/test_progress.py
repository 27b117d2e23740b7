"""Progress where the user waits (infer's progress=true): the model loading, and a long prompt
being read, told in stream frames that carry no delta, only to a caller that asked."""

from __future__ import annotations

import time

import pytest

from llmos.kernel.models import ModelEntry
from llmos.specs.channel import LOAD_STAGES

LOADING_STAGES = {"queued", *LOAD_STAGES}
LONG_PROMPT = " ".join(f"word{i} and the quick brown fox" for i in range(24))   # several CPU prefill chunks


def frames(client, **args) -> tuple[list[dict], dict]:
    """Every progress frame of an infer stream with progress=true, and its final result."""
    seen = []
    stream = client.stream(progress=True, **args)
    stream.on_progress = seen.append
    text = "".join(stream)
    assert text == stream.result["text"]
    return seen, stream.result


@pytest.fixture
def config_kernel(fresh_kernel, tiny_llama, tmp_path):
    """A kernel that knows the tiny model as `tiny` but has not loaded it; boot(state_dir=...) for a second boot."""
    config = tmp_path / "models.toml"
    config.write_text(f'[models.tiny]\npath = "{tiny_llama}"\n')

    def boot(**kw):
        return fresh_kernel(model=None, extra=["--config", str(config)], env={"LLMOS_NO_SERVICES": "1"}, **kw)

    return boot


def test_a_stream_waiting_for_a_load_is_told_which_model_and_its_stage_before_any_text(config_kernel):
    k = config_kernel()
    with k.client() as c:
        started = time.monotonic()
        seen, result = frames(c, prompt="hello", model="tiny", max_tokens=3)
        waited = time.monotonic() - started
    loading = [p for p in seen if p["phase"] == "loading"]
    assert loading, seen
    assert all(p["model"] == "tiny" and p["stage"] in LOADING_STAGES for p in loading)
    elapsed = [p["elapsed_s"] for p in loading]
    assert elapsed == sorted(elapsed) and elapsed[-1] <= waited + 0.1, (elapsed, waited)
    assert loading[0]["expected_s"] is None        # never loaded on this state dir: nothing to go by
    assert result["usage"]["completion_tokens"] == 3


def test_the_last_load_time_survives_a_reboot_as_the_next_loads_estimate(config_kernel, tmp_path):
    first = config_kernel()
    with first.client() as c:
        c.infer(prompt="hello", model="tiny", max_tokens=1)
        took = next(m["load_s"] for m in c.models()["loaded"] if m["name"] == "tiny")
    first.stop()
    again = config_kernel(state_dir=first.state_dir)
    with again.client() as c:
        seen, _ = frames(c, prompt="hello", model="tiny", max_tokens=1)
    assert seen[0]["phase"] == "loading" and seen[0]["expected_s"] == pytest.approx(took, abs=0.01)


def test_a_long_prompt_tells_how_many_of_its_tokens_have_been_read(kernel):
    with kernel.client() as c:
        seen, result = frames(c, prompt=LONG_PROMPT, max_tokens=2)
    prompt_tokens = result["usage"]["prompt_tokens"]
    assert prompt_tokens > 256, "the prompt must take several CPU prefill chunks (max_batch_tokens 256)"
    prefill = [p for p in seen if p["phase"] == "prefill"]
    assert prefill and all(p["total"] == prompt_tokens and 0 < p["done"] < prompt_tokens for p in prefill)
    assert [p["done"] for p in prefill] == sorted(p["done"] for p in prefill)


def test_no_progress_frame_reaches_a_stream_that_did_not_ask(kernel):
    with kernel.client() as c:
        stream = c.stream(prompt=LONG_PROMPT, max_tokens=2)
        stream.on_progress = pytest.fail
        "".join(stream)
    assert stream.progress is None


async def test_a_loading_entry_in_models_carries_its_progress_and_a_ready_one_none():
    entry = ModelEntry("tiny", None, "cpu", "generate")
    entry.stage = "tokenizer"
    entry.started = time.monotonic() - 5.0          # the load began five seconds ago
    progress = entry.describe(expected_s=12.5)["progress"]
    assert progress["model"] == "tiny" and progress["stage"] == "tokenizer" and progress["expected_s"] == 12.5
    assert 5.0 <= progress["elapsed_s"] < 6.0
    entry.state = "ready"
    assert "progress" not in entry.describe()


def test_the_load_times_file_keeps_at_most_its_bound_of_models_latest_first(tmp_path, monkeypatch):
    from llmos.kernel import loadprogress

    monkeypatch.setattr(loadprogress, "MAX_LOAD_TIMES", 3)
    times = loadprogress.LoadTimes(tmp_path)
    for i in range(5):
        times.record(f"model-{i}", float(i))
    again = loadprogress.LoadTimes(tmp_path)          # what the next boot reads
    assert [again.get(f"model-{i}") for i in range(5)] == [None, None, 2.0, 3.0, 4.0]
