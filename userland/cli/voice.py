"""`llmos voice`: speech in and out through the voice service (say, transcribe, ask, chat).

The audio files are read and written here, with the caller's rights; the service gets their bytes.
`chat` needs a microphone: `sounddevice` (pip install 'llmos[voice]') and PortAudio, imported only
by that command, and a clear error with exit code 1 where either or a device is missing.
"""

from __future__ import annotations

import json

import click

from .common import OrderedGroup, connect
from .exits import fail

PROGRAM = "llmos-voice"
MAX_FILE_BYTES = 16 << 20        # the service's own limit on audio (services/speech/audio.py)
CHAT_RATE = 16_000
CHAT_MAX_S = 60


@click.group(cls=OrderedGroup, help="speech: say, transcribe, ask a knowledge base, chat")
def voice() -> None:
    """The subcommands talk to the voice service."""


def _read_audio(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise fail("ENOENT" if isinstance(exc, FileNotFoundError) else "EACCES", f"{path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise fail("EINVAL", f"{path}: over {MAX_FILE_BYTES >> 20} MiB of audio; the service reads 60 s at most")
    return data


def _write(path: str, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise fail("EACCES", f"{path}: {exc.strerror}") from None


@voice.command("say", help="speak TEXT into a WAV file")
@click.argument("text")
@click.option("-o", "--output", required=True, metavar="FILE.wav", help="where to write the speech")
@click.option("--voice", "voice_name", default="en-us", show_default=True, help="eSpeak NG voice (en-us, en, en-us+f3...)")
@click.option("--rate", default=175, show_default=True, type=click.IntRange(80, 450), help="words per minute")
def say(text: str, output: str, voice_name: str, rate: int) -> None:
    with connect(PROGRAM) as c:
        r = c.svc_call("voice", "speak", {"text": text, "voice": voice_name, "rate": rate})
    _write(output, r["audio"])
    click.echo(f"{output}: {r['duration']:.1f} s at {r['sample_rate']} Hz", err=True)


@voice.command("transcribe", help="the words spoken in a WAV file")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--kb", default=None, help="listen for this knowledge base's words (yours, from `llmos support` or kb.ingest)")
@click.option("--json", "as_json", is_flag=True, help="print {text, words, confidence, ...} as JSON")
def transcribe(file: str, kb: str | None, as_json: bool) -> None:
    with connect(PROGRAM) as c:
        r = c.svc_call("voice", "transcribe", {"audio": _read_audio(file), "kb": kb})
    click.echo(json.dumps(r) if as_json else r["text"])


@voice.command("ask", help="ask a knowledge base a spoken question; print (and speak) the answer")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--kb", required=True, help="the knowledge base to answer from")
@click.option("-o", "--output", default=None, metavar="FILE.wav", help="write the spoken answer here")
@click.option("--json", "as_json", is_flag=True, help='print {"transcript", "answer", "citations"} as JSON')
def ask(file: str, kb: str, output: str | None, as_json: bool) -> None:
    with connect(PROGRAM) as c:
        r = c.svc_call("voice", "ask", {"audio": _read_audio(file), "kb": kb})
    if output:
        _write(output, r["audio"])
    if as_json:
        click.echo(json.dumps({"transcript": r["transcript"], "answer": r["answer"], "citations": r["citations"]}))
    else:
        click.echo(f"heard: {r['transcript']}", err=True)
        click.echo(r["answer"])


def _sounddevice():
    """sounddevice with a device to record from, or the reason there is none."""
    try:
        import sounddevice
    except ImportError as exc:      # not installed, or installed without PortAudio (OSError is wrapped as ImportError)
        raise fail("ENODEV", f"voice chat needs sounddevice and PortAudio: pip install 'llmos[voice]' "
                             f"and apt-get install libportaudio2 ({exc})") from None
    except OSError as exc:
        raise fail("ENODEV", f"voice chat needs PortAudio: apt-get install libportaudio2 ({exc})") from None
    try:
        sounddevice.query_devices(kind="input")
    except Exception as exc:        # sounddevice raises its own PortAudioError or ValueError
        raise fail("ENODEV", f"no microphone found: {exc}") from None
    return sounddevice


@voice.command("chat", help="talk to a knowledge base: push Enter to talk, Enter again to stop")
@click.option("--kb", required=True, help="the knowledge base to answer from")
@click.option("--voice", "voice_name", default="en-us", show_default=True, help="the answer's voice")
def chat(kb: str, voice_name: str) -> None:
    sd = _sounddevice()
    import numpy as np
    with connect(PROGRAM) as c:
        click.echo("Enter: start talking; Enter again: send. Ctrl-D quits.", err=True)
        while True:
            try:
                input()
            except EOFError:
                return
            recording = sd.rec(CHAT_RATE * CHAT_MAX_S, samplerate=CHAT_RATE, channels=1, dtype="int16")
            try:
                input()
            except EOFError:
                return
            sd.stop()
            heard = np.trim_zeros(recording[:, 0], "b").astype("<i2")
            if heard.size == 0:
                continue
            r = c.svc_call("voice", "ask", {"audio": heard.tobytes(), "sample_rate": CHAT_RATE, "kb": kb,
                                            "voice": voice_name})
            click.echo(f"you> {r['transcript']}\nagent> {r['answer']}")
            sd.play(decode_wav(r["audio"]), samplerate=r["sample_rate"], blocking=True)


def decode_wav(data: bytes):
    """The samples of a mono 16-bit WAV (what the service speaks)."""
    import io
    import wave

    import numpy as np
    with wave.open(io.BytesIO(data), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")

