"""The voice service on a real kernel: speak, transcribe (general and with a kb's words), ask, bad audio."""

from __future__ import annotations

import pytest

from harness import KernelProcess, raised
from voice_audio import KB_DOC, QUESTION, needs_engines, resampled, spoken, spoken_wav, wav_bytes

pytestmark = needs_engines


@pytest.fixture(scope="module")
def voice_kernel(tmp_path_factory, tiny_llama, tiny_bert):
    k = KernelProcess(tmp_path_factory.mktemp("voice"), model=tiny_llama,
                      env={"LLMOS_SERVICES_EMBED_MODEL": tiny_bert}).start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def vc(voice_kernel):
    with voice_kernel.client("voice-test") as c:
        c.svc_call("kb", "ingest_texts", {"kb": "thermo", "docs": [{"name": "thermo.md", "text": KB_DOC}]},
                   deadline=300)
        yield c
        c.svc_call("kb", "drop", {"kb": "thermo"})


def test_speak_returns_a_wav_of_the_text(vc):
    r = vc.svc_call("voice", "speak", {"text": "Hello from llmos.", "voice": "en-us+f3", "rate": 200})
    assert r["audio"][:4] == b"RIFF" and r["audio"][8:12] == b"WAVE" and r["format"] == "wav"
    assert 0.5 < r["duration"] < 4 and r["sample_rate"] == 22050
    assert abs(len(r["audio"]) - 44 - 2 * r["duration"] * r["sample_rate"]) <= 2 * 0.001 * r["sample_rate"]


def test_transcribe_with_the_kb_hears_its_words(vc):
    r = vc.svc_call("voice", "transcribe", {"audio": spoken_wav(QUESTION), "kb": "thermo"}, deadline=120)
    assert r["model"] == "kb" and "the batteries last" in r["text"]
    assert [w["word"] for w in r["words"]] == r["text"].split()
    times = [t for w in r["words"] for t in (w["start"], w["end"])]
    assert times == sorted(times) and 0 <= times[0] and times[-1] <= r["duration"] + 0.01
    assert 0.0 <= r["confidence"] <= 1.0


def test_transcribe_without_a_kb_uses_the_general_model(vc):
    r = vc.svc_call("voice", "transcribe", {"audio": spoken_wav("Hello world.")}, deadline=120)
    assert r["model"] == "general" and isinstance(r["text"], str) and r["duration"] > 0.5


def test_transcribe_reads_any_rate_and_channel_count_and_raw_pcm(vc):
    samples, rate = spoken(QUESTION)
    stereo_48k = wav_bytes(resampled(samples, rate, 48000), 48000, channels=2)
    raw_8k = resampled(samples, rate, 8000).astype("<i2").tobytes()
    for args in ({"audio": stereo_48k}, {"audio": raw_8k, "sample_rate": 8000}):
        r = vc.svc_call("voice", "transcribe", {**args, "kb": "thermo"}, deadline=120)
        assert "batteries" in r["text"].split(), r["text"]


def test_the_kb_model_is_rebuilt_when_the_kb_changes(vc):
    clip = spoken_wav("Tell me about the Quorvex adapter.")
    vc.svc_call("kb", "ingest_texts", {"kb": "growing", "docs": [{"name": "a.md", "text": KB_DOC}]}, deadline=300)
    try:
        before = vc.svc_call("voice", "transcribe", {"audio": clip, "kb": "growing"}, deadline=120)
        assert "quorvex" not in before["text"]       # not a word of the kb, nor of any dictionary
        vc.svc_call("kb", "ingest_texts", {"kb": "growing", "docs": [
            {"name": "b.md", "text": "# Adapters\n\nThe Quorvex adapter charges the thermostat."}]}, deadline=300)
        after = vc.svc_call("voice", "transcribe", {"audio": clip, "kb": "growing"}, deadline=120)
        assert after["vocabulary"] > before["vocabulary"]
    finally:
        vc.svc_call("kb", "drop", {"kb": "growing"})


def test_a_made_up_name_in_the_kb_is_heard(vc):
    vc.svc_call("kb", "ingest_texts", {"kb": "names", "docs": [
        {"name": "a.md", "text": KB_DOC + "\n\n# Adapters\n\nThe Quorvex adapter charges the thermostat."}]},
                deadline=300)
    try:
        r = vc.svc_call("voice", "transcribe", {"audio": spoken_wav("Tell me about the Quorvex adapter."),
                                                "kb": "names"}, deadline=120)
        assert "quorvex adapter" in r["text"], r["text"]
    finally:
        vc.svc_call("kb", "drop", {"kb": "names"})


def test_ask_transcribes_answers_from_the_kb_and_speaks(vc):
    r = vc.svc_call("voice", "ask", {"audio": spoken_wav(QUESTION), "kb": "thermo"}, deadline=120)
    assert "the batteries last" in r["transcript"]
    assert r["citations"] and all(c["source"] == "thermo.md" for c in r["citations"])
    assert r["answer"] and r["audio"][:4] == b"RIFF" and r["sample_rate"] == 22050


def test_ask_and_transcribe_need_an_existing_kb(vc):
    for task in ("ask", "transcribe"):
        error = raised(vc.svc_call, "voice", task, {"audio": spoken_wav("hello"), "kb": "no-such-kb"})
        assert error.errno == "ENOENT" and "no-such-kb" in error.message


@pytest.mark.parametrize("audio, rate, words", [
    (b"", None, "empty"),
    (b"ID3\x03 this is an mp3, not a wav" * 10, None, "not a WAV"),
    (wav_bytes([], 16000), None, "empty"),
    (wav_bytes([0] * 1000, 16000, width=1), None, "8-bit"),
    (wav_bytes([0] * (61 * 8000), 8000), None, "over the limit of 60 s"),
    (b"\x00\x01\x02", 16000, "even number of bytes"),
    (wav_bytes([0] * 1000, 4000), None, "sample rate 4000"),
], ids=["empty", "not-wav", "no-samples", "8-bit", "too-long", "odd-pcm", "low-rate"])
def test_bad_audio_is_einval_naming_what_is_wrong(vc, audio, rate, words):
    error = raised(vc.svc_call, "voice", "transcribe", {"audio": audio, "sample_rate": rate})
    assert error.errno == "EINVAL" and words in error.message, error.message


def test_audio_over_the_size_limit_is_refused_before_the_task_runs(vc):
    from llmos.services.speech.audio import MAX_AUDIO_BYTES
    error = raised(vc.svc_call, "voice", "transcribe", {"audio": b"\0" * (MAX_AUDIO_BYTES + 2), "sample_rate": 16000})
    assert error.errno == "EINVAL" and "audio" in error.message


@pytest.mark.parametrize("args, words", [({"text": "hi", "voice": "klingon"}, "unknown voice"),
                                         ({"text": "   "}, "empty"),
                                         ({"text": "hi", "rate": 10}, "rate")])
def test_speak_refuses_bad_arguments(vc, args, words):
    error = raised(vc.svc_call, "voice", "speak", args)
    assert error.errno == "EINVAL" and words in error.message, error.message
