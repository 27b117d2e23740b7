"""`llmos voice ...` and the gateway's audio routes (through the `openai` client) on a real kernel."""

from __future__ import annotations

import json
import subprocess

import httpx
import openai
import pytest

from harness import KernelProcess
from llmos.userland.gateway.audio import MAX_UPLOAD_BYTES
from llmos.userland.gateway.testing import GatewayProcess
from llmos.userland.testing import LLMOS_COMMAND
from voice_audio import KB_DOC, QUESTION, needs_engines, spoken_wav, wav_bytes

pytestmark = needs_engines


@pytest.fixture(scope="module")
def vk(tmp_path_factory, tiny_llama, tiny_bert):
    k = KernelProcess(tmp_path_factory.mktemp("voice-surfaces"), model=tiny_llama,
                      env={"LLMOS_SERVICES_EMBED_MODEL": tiny_bert}).start()
    with k.client("llmos-voice") as c:       # the CLI's program name; kbs are the principal's anyway
        c.svc_call("kb", "ingest_texts", {"kb": "thermo", "docs": [{"name": "thermo.md", "text": KB_DOC}]},
                   deadline=300)
    yield k
    k.stop()


@pytest.fixture(scope="module")
def gw(vk):
    with GatewayProcess(vk.cli_env()) as g:
        yield g


@pytest.fixture
def client(gw):
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="-", max_retries=0, timeout=120) as c:
        yield c


def llmos(vk, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LLMOS_COMMAND, *args], capture_output=True, text=True, env=vk.cli_env(), timeout=180)


def test_cli_say_then_transcribe_and_ask_a_kb(vk, tmp_path):
    wav = tmp_path / "q.wav"
    said = llmos(vk, "voice", "say", QUESTION, "-o", str(wav), "--rate", "160")
    assert said.returncode == 0, said.stderr
    assert wav.read_bytes()[:4] == b"RIFF"
    heard = llmos(vk, "voice", "transcribe", str(wav), "--kb", "thermo", "--json")
    assert heard.returncode == 0, heard.stderr
    assert "batteries" in json.loads(heard.stdout)["text"]
    answer_wav = tmp_path / "a.wav"
    asked = llmos(vk, "voice", "ask", str(wav), "--kb", "thermo", "-o", str(answer_wav), "--json")
    assert asked.returncode == 0, asked.stderr
    r = json.loads(asked.stdout)
    assert set(r) == {"transcript", "answer", "citations"} and "batteries" in r["transcript"]
    assert r["citations"][0]["source"] == "thermo.md" and answer_wav.read_bytes()[:4] == b"RIFF"


def test_cli_refuses_bad_audio_with_the_services_reason(vk, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio at all")
    r = llmos(vk, "voice", "transcribe", str(bad))
    assert r.returncode == 1 and "EINVAL" in r.stderr and "not a WAV" in r.stderr
    missing = llmos(vk, "voice", "transcribe", str(tmp_path / "nope.wav"))
    assert missing.returncode == 1 and "ENOENT" in missing.stderr


def test_cli_chat_without_a_microphone_says_so(vk):
    r = llmos(vk, "voice", "chat", "--kb", "thermo")
    assert r.returncode == 1 and "ENODEV" in r.stderr, r.stderr


def test_openai_transcriptions_with_the_kb(client):
    wav = spoken_wav(QUESTION)
    text = client.audio.transcriptions.create(model="pocketsphinx", file=("q.wav", wav), extra_body={"kb": "thermo"})
    assert "the batteries last" in text.text
    verbose = client.audio.transcriptions.create(model="pocketsphinx", file=("q.wav", wav),
                                                 response_format="verbose_json", extra_body={"kb": "thermo"})
    assert verbose.text == text.text and verbose.duration > 1
    plain = client.audio.transcriptions.create(model="x", file=("q.wav", wav), response_format="text",
                                               extra_body={"kb": "thermo"})
    assert plain.strip() == text.text


def test_openai_speech_in_wav_and_pcm(client):
    wav = client.audio.speech.create(model="espeak", voice="alloy", input="Hello there.", response_format="wav")
    assert wav.content[:4] == b"RIFF"
    pcm = client.audio.speech.create(model="espeak", voice="nova", input="Hello there.", response_format="pcm",
                                     speed=1.5)
    assert len(pcm.content) % 2 == 0 and 0.3 < len(pcm.content) / 2 / 24000 < 3


@pytest.mark.parametrize("audio, words", [(b"", "empty"), (b"definitely not a wav file", "not a WAV"),
                                          (wav_bytes([0] * 800, 8000, width=1), "8-bit"),
                                          (wav_bytes([0] * (61 * 8000), 8000), "60 s")],
                         ids=["empty", "not-wav", "8-bit", "too-long"])
def test_openai_transcriptions_refuse_bad_audio_with_400(client, audio, words):
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(model="x", file=("a.wav", audio))
    assert words in err.value.body["message"]


def test_an_upload_over_the_limit_is_413(gw):
    big = b"\0" * (MAX_UPLOAD_BYTES + 1)
    r = httpx.post(gw.url + "/v1/audio/transcriptions", files={"file": ("a.wav", big)}, data={"model": "x"},
                   timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("body, param", [({"model": "x", "input": "hi", "voice": "klingon"}, None),
                                         ({"model": "x", "input": "", "voice": "alloy"}, "input"),
                                         ({"model": "x", "input": "hi", "voice": "alloy", "response_format": "mp3"},
                                          "response_format"),
                                         ({"model": "x", "input": "hi", "voice": "alloy", "speed": 9}, "speed")],
                         ids=["voice", "input", "format", "speed"])
def test_openai_speech_refuses_bad_parameters_with_400(gw, body, param):
    r = httpx.post(gw.url + "/v1/audio/speech", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
