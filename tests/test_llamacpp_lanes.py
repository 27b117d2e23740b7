"""How llama.cpp's streams lane is sized (drivers/llamacpp_runner.stream_lane): pure arithmetic, so
it runs without llama-cpp-python; the lanes themselves are tested in test_llamacpp_backend.py."""

from __future__ import annotations

import pytest

from llmos.drivers.llamacpp_runner import MIN_STREAMS, STREAM_FLOOR, STREAMS, STREAMS_ENV, stream_lane, wanted_streams

SMOLLM2 = 23040          # bytes a token: 30 layers x 3 kv heads x 64 x 2 (keys, values) x fp16
LLAMA_8B = 131072        # 32 layers x 8 kv heads x 128 x 2 x fp16
MiB = 1 << 20


def test_the_default_model_gets_every_stream_and_as_many_tokens_each_as_its_budget_gives():
    streams, tokens = stream_lane(SMOLLM2, 256 * MiB, 8192, 64)
    assert (streams, tokens) == (STREAMS, 256 * MiB // (STREAMS * SMOLLM2))      # 16 streams of 728 tokens
    assert streams * tokens * SMOLLM2 <= 256 * MiB


@pytest.mark.parametrize("per_token,budget,context,max_seqs", [
    (SMOLLM2, 256 * MiB, 8192, 64), (SMOLLM2, 2048 * MiB, 8192, 64), (SMOLLM2, 2048 * MiB, 2048, 64),
    (LLAMA_8B, 512 * MiB, 8192, 64), (LLAMA_8B, 4096 * MiB, 131072, 8), (SMOLLM2, 64 * MiB, 300, 64),
])
def test_the_lane_never_takes_more_than_its_budget_nor_gives_a_stream_more_than_the_context(per_token, budget,
                                                                                           context, max_seqs):
    streams, tokens = stream_lane(per_token, budget, context, max_seqs)
    assert streams * tokens * per_token <= budget
    assert tokens <= context and streams <= min(STREAMS, max_seqs)
    assert streams == 0 or (streams >= MIN_STREAMS and tokens >= min(STREAM_FLOOR, context))


def test_a_stream_is_never_cut_below_its_floor_fewer_streams_are_made_instead():
    streams, tokens = stream_lane(LLAMA_8B, 512 * MiB, 8192, 64)       # 4,096 tokens in all
    assert (streams, tokens) == (8, STREAM_FLOOR)


@pytest.mark.parametrize("per_token,budget,max_seqs,wanted", [
    (LLAMA_8B, 128 * MiB, 64, None),     # 1,024 tokens: two streams of the floor, too few to be worth a lane
    (SMOLLM2, 256 * MiB, 2, None),       # an engine of two sequences
    (SMOLLM2, 256 * MiB, 64, 0),         # the operator turned it off
])
def test_no_lane_where_it_would_hold_too_few_streams(per_token, budget, max_seqs, wanted):
    assert stream_lane(per_token, budget, 8192, max_seqs, wanted) == (0, 0)


def test_the_operator_sets_the_most_streams_and_a_bad_value_is_refused(monkeypatch):
    monkeypatch.setenv(STREAMS_ENV, "0")
    assert wanted_streams() == 0 and stream_lane(SMOLLM2, 256 * MiB, 8192, 64) == (0, 0)
    monkeypatch.setenv(STREAMS_ENV, "8")
    assert stream_lane(SMOLLM2, 256 * MiB, 8192, 64) == (8, 1456)
    monkeypatch.delenv(STREAMS_ENV)
    assert wanted_streams() == STREAMS
    for bad in ("lots", "-1", "257", "1.5"):
        monkeypatch.setenv(STREAMS_ENV, bad)
        with pytest.raises(ValueError, match=STREAMS_ENV):
            wanted_streams()
