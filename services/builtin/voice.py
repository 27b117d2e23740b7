"""voice: speech in, speech out, offline; recognition biased to the caller's knowledge base.

`transcribe` hears a clip with PocketSphinx; given a kb, with a language model built from that
kb's own text (services/speech/lm.py), which is what makes it usable: the general model gets most
words of a support question wrong. The kb is the caller's own, read through ctx.kernel as kb.py
reads it, and its recognizer is cached per version (a hash of its text), so a changed kb is heard
with its new words. `speak` is eSpeak NG. `ask` is the two around kb's answer: transcribe with the
kb's words, answer with kb.answer_question (quotes with citations), speak the answer.

Everything heavy (decoding audio, building a model, recognition, synthesis) runs on the caller's
worker threads (ctx.cpu), and recognition stops at the call's budget (workers.checkpoint).
"""

from __future__ import annotations

import asyncio

from llmos.services import ServiceError, Task, hookimpl
from llmos.services.speech import audio
from llmos.services.speech.backends import RECOGNIZERS, content_hash, synthesizer
from llmos.services.speech.espeak import DEFAULT_RATE, DEFAULT_VOICE, MAX_RATE, MAX_TEXT_CHARS, MIN_RATE, EspeakError
from llmos.services.workers import checkpoint
from llmos.userland.client import LLMOSError

from . import kb as kb_service

MAX_KB_CHUNKS = 2_000        # chunks of a kb read for its vocabulary (the first, in key order)
READ_CONCURRENCY = 16        # memreads in flight while reading a kb's text
MAX_SPEECH_S = 600           # longest answer spoken: 10 minutes of 22 kHz audio is 26 MB, under the frame limit
NOT_HEARD = "I didn't catch a question in that recording."


async def _decode(ctx, data: bytes, sample_rate: int | None):
    try:
        return await ctx.cpu(audio.decode, data, sample_rate)
    except audio.AudioError as exc:
        raise ServiceError("EINVAL", f"audio: {exc}") from None


async def _kb_texts(ctx, kb: str) -> tuple[list[tuple[str, str]], str]:
    """The kb's (key, text) entries, at most MAX_KB_CHUNKS, and its region; ENOENT when there is no such kb."""
    region = kb_service.region_for(ctx, kb)
    try:
        keys = sorted((await ctx.kernel.memread(region))["keys"])[:MAX_KB_CHUNKS]
    except LLMOSError as exc:
        if exc.errno == "ENOENT":
            raise ServiceError("ENOENT", f"no knowledge base '{kb}': ingest documents into it first") from None
        raise
    entries: list[tuple[str, str]] = []
    pending = iter(keys)

    async def reader() -> None:
        for key in pending:
            try:
                value = (await ctx.kernel.memread(region, key))["value"]
            except LLMOSError as exc:
                if exc.errno == "ENOENT":         # deleted since the listing
                    continue
                raise
            entries.append((key, value if isinstance(value, str) else value.decode("utf-8", "replace")))

    await asyncio.gather(*(reader() for _ in range(READ_CONCURRENCY)))
    return entries, region


async def _recognizer(ctx, kb: str | None):
    if kb is None:
        return await ctx.cpu(RECOGNIZERS.general, ctx.caller.get("principal", "?"))
    entries, _ = await _kb_texts(ctx, kb)
    version = await ctx.cpu(content_hash, entries)
    key = (ctx.caller.get("principal", "?"), kb, version)
    return await ctx.cpu(RECOGNIZERS.for_kb, key, [text for _, text in sorted(entries)])


async def _transcribe(ctx, samples, kb: str | None) -> dict:
    recognizer = await _recognizer(ctx, kb)
    heard = await ctx.cpu(recognizer.transcribe, samples, checkpoint)
    result = {"text": heard.text, "words": heard.words, "confidence": heard.confidence,
              "duration": round(len(samples) / audio.RATE, 3), "model": "kb" if kb else "general",
              "vocabulary": getattr(recognizer, "words", None)}
    if kb is not None and not heard.text:     # nothing in the kb's words: perhaps something else was said
        general = await ctx.cpu(RECOGNIZERS.general, ctx.caller.get("principal", "?"))
        heard = await ctx.cpu(general.transcribe, samples, checkpoint)
        result.update(text=heard.text, words=heard.words, confidence=heard.confidence, model="general")
    return result


async def transcribe(ctx, audio: bytes, sample_rate: int | None = None, kb: str | None = None) -> dict:
    return await _transcribe(ctx, await _decode(ctx, audio, sample_rate), kb)


def _speak(text: str, voice: str, rate: int) -> dict:
    try:
        samples, sample_rate = synthesizer().synthesize(text, voice, rate)
    except EspeakError as exc:
        raise ServiceError("EINVAL", str(exc)) from None
    duration = len(samples) / sample_rate
    if duration > MAX_SPEECH_S:
        raise ServiceError("EINVAL", f"the speech would be {duration:.0f} s long, over {MAX_SPEECH_S} s: "
                                     f"send less text or a faster rate")
    return {"audio": audio.encode_wav(samples, sample_rate), "sample_rate": sample_rate,
            "duration": round(duration, 3), "format": "wav"}


async def speak(ctx, text: str, voice: str = DEFAULT_VOICE, rate: int = DEFAULT_RATE) -> dict:
    if not text.strip():
        raise ServiceError("EINVAL", "speak: 'text' is empty")
    return await ctx.cpu(_speak, text, voice, rate)


async def ask(ctx, audio: bytes, kb: str, sample_rate: int | None = None, voice: str = DEFAULT_VOICE,
              rate: int = DEFAULT_RATE) -> dict:
    heard = await _transcribe(ctx, await _decode(ctx, audio, sample_rate), kb)
    if not heard["text"]:
        answer, citations, found = NOT_HEARD, [], False
    else:
        result = await kb_service.answer_question(ctx, kb, heard["text"])
        answer, citations, found = result["answer"], result["citations"], result["found"]
    spoken = await ctx.cpu(_speak, answer, voice, rate)
    return {"transcript": heard["text"], "confidence": heard["confidence"], "answer": answer, "found": found,
            "citations": citations, "audio": spoken["audio"], "sample_rate": spoken["sample_rate"],
            "text": answer}


_AUDIO = {"type": "bytes", "max_len": audio.MAX_AUDIO_BYTES,
          "doc": f"a WAV file (16-bit PCM, any rate and channel count), or raw 16-bit mono PCM with sample_rate; "
                 f"at most {audio.MAX_SECONDS:.0f} s"}
_RATE_ARG = {"type": "int|null", "nullable": True, "min": audio.MIN_RATE, "max": audio.MAX_RATE,
             "doc": "the sample rate of raw PCM audio (not needed for WAV)"}
_VOICE = {"type": "str", "default": DEFAULT_VOICE, "max_len": 64,
          "doc": "an eSpeak NG voice: en-us, en (British), en-us+f3 (a variant after '+')..."}
_WPM = {"type": "int", "default": DEFAULT_RATE, "min": MIN_RATE, "max": MAX_RATE, "doc": "words per minute"}
_KB = {"type": "str", "max_len": 64, "doc": "the caller's knowledge base (kb service) whose words to listen for"}


@hookimpl
def register_services(register):
    register("voice", {
        "transcribe": Task(transcribe, "Speech to text: {text, words: [{word, start, end}], confidence}. With a kb, "
                                       "recognition listens for that knowledge base's words and phrasings.",
                           args={"audio": _AUDIO, "sample_rate": _RATE_ARG,
                                 "kb": {**_KB, "type": "str|null", "nullable": True}},
                           cost_limit_s=120),
        "speak": Task(speak, "Text to speech: {audio: WAV bytes, sample_rate, duration}.",
                      args={"text": {"type": "str", "max_len": MAX_TEXT_CHARS}, "voice": _VOICE, "rate": _WPM}),
        "ask": Task(ask, "A spoken question about a knowledge base: transcribed with the kb's words, answered by "
                         "kb (a quote with citations), the answer spoken: {transcript, answer, citations, audio}.",
                    args={"audio": _AUDIO, "kb": _KB, "sample_rate": _RATE_ARG, "voice": _VOICE, "rate": _WPM},
                    cost_limit_s=120),
    }, description="Speech in and out, offline (PocketSphinx, eSpeak NG); recognition biased to a knowledge base.")
