"""The voice assistant, round trip: questions spoken by eSpeak NG, heard by PocketSphinx, answered by kb.

    python benchmarks/voice.py [--quick | --asr-only] [--out benchmarks/results/voice.txt]

A set of our own: three documents (benchmarks/voice_kb/) and 20 questions about them
(benchmarks/voice_questions.json, each with a fact its answer must hold), each spoken with three
eSpeak NG voices at three rates (60 clips; --quick: one voice). Reported:

- WER of the general model and of the kb's model (words as services/speech/text.py spells them;
  the engines in this process, so it is the recognizer's, not the service's, error);
- the real-time factor of transcribe (kb model) and of speak, in this process;
- through a real kernel (the default model, MiniLM embeddings) and the voice service: the share of
  spoken questions whose answer (voice.ask) holds the expected fact, beside the same questions typed
  (kb.ask), and the wall time of a voice.ask call.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOICES = [("en-us", 160), ("en+m3", 190), ("en-us+f3", 175)]


def wer_counts(ref: list[str], hyp: list[str]) -> int:
    """Word edits (substitutions, insertions, deletions) from ref to hyp."""
    d = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(hyp) + 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (ref[i - 1] != hyp[j - 1]))
    return d[len(hyp)]


def clips(questions: list[dict], voices) -> list[dict]:
    from llmos.services.speech import audio
    from llmos.services.speech.espeak import ESPEAK
    out, spoken_s, synth_s = [], 0.0, 0.0
    for voice, rate in voices:
        for q in questions:
            t = time.perf_counter()
            samples, sr = ESPEAK.synthesize(q["q"], voice, rate)
            synth_s += time.perf_counter() - t
            spoken_s += len(samples) / sr
            wav = audio.encode_wav(samples, sr)
            out.append({**q, "voice": f"{voice}@{rate}", "wav": wav, "pcm": audio.decode(wav)})
    return out, synth_s / spoken_s


def recognizer_wer(items: list[dict], docs: list[str], lines: list[str]) -> dict:
    from llmos.services.speech import backends, text
    models = {"general": backends.build_recognizer(None), "kb": backends.build_recognizer(docs),
              "kb+general 0.05": backends.build_recognizer(docs, general_weight=0.05)}
    out = {}
    for name, rec in models.items():
        errors = words = 0
        busy = heard_s = 0.0
        per_voice: dict[str, list[int]] = {}
        for it in items:
            t = time.perf_counter()
            got = rec.transcribe(it["pcm"]).text.split()
            busy += time.perf_counter() - t
            heard_s += len(it["pcm"]) / 16000
            ref = text.words(it["q"])
            e = wer_counts(ref, got)
            errors, words = errors + e, words + len(ref)
            pv = per_voice.setdefault(it["voice"], [0, 0])
            pv[0], pv[1] = pv[0] + e, pv[1] + len(ref)
            if name == "kb":
                lines.append(f"  kb  {it['voice']:<14} {e} | {' '.join(ref)} | {' '.join(got)}")
        out[name] = {"wer": errors / words, "rtf": busy / heard_s,
                     "per_voice": {v: round(a / b, 3) for v, (a, b) in per_voice.items()}}
    return out


def end_to_end(items: list[dict], questions: list[dict], docs: list[dict]) -> dict:
    from llmos.userland.testing import KernelProcess
    with tempfile.TemporaryDirectory(prefix="llmos-voice-bench-") as tmp:
        kernel = KernelProcess(Path(tmp) / "kernel", model="smollm2-135m-instruct").start(timeout=400)
        try:
            with kernel.client("voice-bench", timeout=None) as c:
                c.svc_call("kb", "ingest_texts", {"kb": "bench", "docs": docs}, deadline=600)
                typed = sum(q["expect"] in c.svc_call("kb", "ask", {"kb": "bench", "question": q["q"]})["answer"].lower()
                            for q in questions)
                spoken, times = 0, []
                for it in items:
                    t = time.perf_counter()
                    r = c.svc_call("voice", "ask", {"audio": it["wav"], "kb": "bench"}, deadline=120)
                    times.append(time.perf_counter() - t)
                    spoken += it["expect"] in r["answer"].lower()
        finally:
            kernel.stop()
    times.sort()
    return {"typed": typed / len(questions), "spoken": spoken / len(items), "n_typed": len(questions),
            "n_spoken": len(items), "ask_p50_s": times[len(times) // 2], "ask_max_s": times[-1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one voice, no kernel")
    p.add_argument("--asr-only", action="store_true", help="every voice, no kernel (the recognizers and speak only)")
    p.add_argument("--out", default=None, help="also write the report here")
    a = p.parse_args()
    questions = json.loads((ROOT / "benchmarks" / "voice_questions.json").read_text())
    paths = sorted(glob.glob(str(ROOT / "benchmarks" / "voice_kb" / "*.md")))
    docs = [{"name": os.path.basename(f), "text": Path(f).read_text()} for f in paths]
    items, speak_rtf = clips(questions, VOICES[:1] if a.quick else VOICES)
    lines: list[str] = []
    wer = recognizer_wer(items, [d["text"] for d in docs], lines)
    report = [f"voice round trip: {len(questions)} questions x {len(items) // len(questions)} voices = {len(items)} clips, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
              f"{'model':<16} {'WER':>6} {'RTF':>6}  per voice"]
    for name, r in wer.items():
        report.append(f"{name:<16} {r['wer']:6.3f} {r['rtf']:6.3f}  {r['per_voice']}")
    report.append(f"speak (eSpeak NG) RTF {speak_rtf:.4f}")
    if not (a.quick or a.asr_only):
        e2e = end_to_end(items, questions, docs)
        report.append(f"answer holds the expected fact: typed {e2e['typed']:.0%} ({e2e['n_typed']}), "
                      f"spoken {e2e['spoken']:.0%} ({e2e['n_spoken']} clips); voice.ask p50 {e2e['ask_p50_s']:.2f} s, "
                      f"max {e2e['ask_max_s']:.2f} s")
    report += ["", "kb model, clip by clip (errors | reference | heard):"] + lines
    text = "\n".join(report) + "\n"
    sys.stdout.write(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
