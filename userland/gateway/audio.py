"""OpenAI's audio routes over the voice service: /v1/audio/transcriptions and /v1/audio/speech.

Transcriptions come as multipart/form-data (OpenAI's `file`, `model`, `response_format`, plus our
`kb`: listen for that knowledge base's words, the caller's own). The body is read here up to
MAX_UPLOAD_BYTES (413 past it, by Content-Length or as it streams in) before the form is parsed,
so an upload cannot grow the gateway's memory or disk past it. The audio itself is checked by the
voice service (WAV or not, length, sample width), whose EINVAL is a 400 naming what is wrong.
"""

from __future__ import annotations

import io
import wave

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .errors import ApiError, bad_param, unsupported
from .http import read_bounded

MAX_UPLOAD_BYTES = (16 << 20) + (64 << 10)     # the voice service's 16 MiB of audio, and the form's other fields
TRANSCRIBE_FORMATS = ("json", "text", "verbose_json")
SPEECH_FORMATS = ("wav", "pcm")
TRANSCRIBE_FIELDS = {"file", "model", "response_format", "kb", "language", "prompt", "temperature"}
SPEECH_PARAMS = {"model", "input", "voice", "response_format", "speed", "instructions"}
MAX_INPUT_CHARS = 4096
PCM_RATE = 24_000                  # OpenAI's `pcm`: raw 16-bit little-endian mono at 24 kHz
BASE_WPM = 175                     # speed 1.0
# OpenAI's voice names, as eSpeak NG voices; any other name is taken as an eSpeak voice (en-us+f3...).
VOICES = {"alloy": "en-us", "ash": "en-us+m3", "ballad": "en+m2", "coral": "en-us+f3", "echo": "en-us+m1",
          "fable": "en", "onyx": "en-us+m7", "nova": "en-us+f2", "sage": "en-us+f4", "shimmer": "en-us+f5",
          "verse": "en+m4"}


async def _upload(request: Request) -> bytes:
    too_large = ApiError(413, f"the upload is over the gateway's limit of {MAX_UPLOAD_BYTES} bytes "
                              f"(16 MiB of audio, 60 s at most)", code="request_too_large")
    return await read_bounded(request, MAX_UPLOAD_BYTES, too_large)


async def _form(request: Request) -> dict:
    """The multipart form's fields: str values, and `file` as bytes."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "send the audio as multipart/form-data with a 'file' part", code="invalid_content_type")
    body = await _upload(request)

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except Exception as exc:       # python-multipart's and starlette's parse errors have no common base
        raise ApiError(400, f"the multipart form could not be read: {str(exc)[:200]}", code="invalid_form") from None
    fields = {}
    try:
        for name, value in form.multi_items():
            if name not in TRANSCRIBE_FIELDS:
                raise unsupported(name)
            fields[name] = await value.read() if hasattr(value, "read") else value
    finally:
        await form.close()
    return fields


async def transcriptions(request: Request):
    g = request.app.state.gateway
    who = await g.identify(request)
    form = await _form(request)
    audio = form.get("file")
    if not isinstance(audio, bytes):
        raise bad_param("file", "'file' is required: the audio to transcribe, as a file part (WAV, 16-bit PCM)")
    if not isinstance(form.get("model"), str):
        raise bad_param("model", "'model' is required (any name: the voice service's recognizer answers)")
    fmt = form.get("response_format", "json")
    if fmt not in TRANSCRIBE_FORMATS:
        raise bad_param("response_format", f"response_format must be one of {', '.join(TRANSCRIBE_FORMATS)}")
    if form.get("language") not in (None, "en"):
        raise bad_param("language", "only English ('en') is recognized")
    args = {"audio": audio}
    if form.get("kb"):
        args["kb"] = form["kb"]
    r = await g.call(request, who, "svc_call", service="voice", task="transcribe", args=args)
    if fmt == "text":
        return PlainTextResponse(r["text"])
    if fmt == "json":
        return JSONResponse({"text": r["text"]})
    words = r["words"]
    return JSONResponse({"task": "transcribe", "language": "english", "duration": r["duration"], "text": r["text"],
                         "words": words, "segments": [{"id": 0, "start": words[0]["start"] if words else 0.0,
                                                       "end": words[-1]["end"] if words else 0.0, "text": r["text"],
                                                       "confidence": r["confidence"]}]})


def _speech_args(body) -> tuple[dict, str]:
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    for name in body:
        if name not in SPEECH_PARAMS:
            raise unsupported(name)
    text, voice = body.get("input"), body.get("voice")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_INPUT_CHARS:
        raise bad_param("input", f"'input' must be a non-empty string of at most {MAX_INPUT_CHARS} characters")
    if not isinstance(body.get("model"), str):
        raise bad_param("model", "'model' is required (any name: eSpeak NG speaks)")
    if not isinstance(voice, str) or not voice:
        raise bad_param("voice", f"'voice' is required: one of {', '.join(VOICES)} or an eSpeak NG voice")
    fmt = body.get("response_format", "wav")
    if fmt not in SPEECH_FORMATS:
        raise bad_param("response_format", f"response_format must be one of {', '.join(SPEECH_FORMATS)} "
                                           f"(no compressed formats: llmos has no encoder for them)")
    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.5 <= speed <= 2.5:
        raise bad_param("speed", "speed must be a number from 0.5 to 2.5 (eSpeak NG's 80 to 450 words a minute)")
    return {"text": text, "voice": VOICES.get(voice, voice), "rate": max(80, min(450, round(BASE_WPM * speed)))}, fmt


async def speech(request: Request):
    g = request.app.state.gateway
    who = await g.identify(request)
    args, fmt = _speech_args(await g.body(request))
    r = await g.call(request, who, "svc_call", service="voice", task="speak", args=args)
    if fmt == "wav":
        return Response(r["audio"], media_type="audio/wav")
    return Response(_pcm(r["audio"]), media_type="audio/pcm")


def _pcm(wav_data: bytes) -> bytes:
    """The speech as OpenAI's pcm: raw 16-bit mono at 24 kHz (eSpeak speaks at 22,050 Hz: going up, linear
    interpolation needs no filter)."""
    with wave.open(io.BytesIO(wav_data), "rb") as w:
        rate, samples = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    count = max(1, round(len(samples) * PCM_RATE / rate))
    out = np.interp(np.arange(count) * (rate / PCM_RATE), np.arange(len(samples)), samples.astype(np.float32))
    return np.clip(np.rint(out), -32768, 32767).astype("<i2").tobytes()


ROUTES = [
    Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
    Route("/v1/audio/speech", speech, methods=["POST"]),
]
