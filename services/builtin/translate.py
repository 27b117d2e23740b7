"""translate: between the languages the generating model can handle, and a refusal for the rest.

Which pairs a model handles is a measured fact, kept in MODEL_PAIRS. SmolLM2-135M-Instruct,
the default, was tried on 30 short support sentences (26 from French, Spanish, German, Italian,
Portuguese and Dutch into English, 4 from English into French, Spanish and German; zero-shot
and few-shot, greedy): 2 of 30 kept their meaning, the rest were fluent text that said something
else ("Der Laden öffnet um neun Uhr morgens" -> "The man who is behind the camera..."). A
translation that reads well and is wrong is worse than none, so for that model no pair is
supported: `text` answers EINVAL naming what it can do, unless the caller passes
`best_effort=true` and accepts a draft flagged `reliable: false`. Models not in the table
(a larger one set as the kernel's default or passed as `model`) get GENERIC_LANGUAGES,
unverified, and their results say so. Language detection (stopword profiles) is reliable
for the languages it knows and is a task of its own.
"""

from __future__ import annotations

from llmos.services import ServiceError, Task, hookimpl
from llmos.services import nlp

LANGUAGES = {"en": "English", "fr": "French", "es": "Spanish", "de": "German", "it": "Italian", "pt": "Portuguese",
             "nl": "Dutch"}
MODEL_PAIRS: dict[str, set[tuple[str, str]]] = {
    "smollm2-135m-instruct": set(),        # measured: 2/30 correct; see the module docstring
}
GENERIC_LANGUAGES = set(LANGUAGES)

_PROFILES = {
    "en": "the and is are was were of to in that it for on with you this have not be at by from they we i my your".split(),
    "fr": "le la les et est sont un une des du de que qui pas pour dans sur avec vous nous je il elle ce ma mon ne".split(),
    "es": "el la los las y es son un una de del que no por para en con se su mi yo usted está pero como muy".split(),
    "de": "der die das und ist sind ein eine nicht zu mit den dem des ich sie er wir ihr mein auf für von im".split(),
    "it": "il lo la gli le e è sono un una di del che non per in con si mio io ho ma come della alle".split(),
    "pt": "o a os as e é são um uma de do da que não por para em com se meu eu mas como ainda às".split(),
    "nl": "de het een en is zijn van dat niet te met op voor ik je mijn we ze er maar nog om".split(),
}


_PROFILE_SETS = {lang: frozenset(words) for lang, words in _PROFILES.items()}


def detect(text: str) -> tuple[str | None, float]:
    """(language code, confidence) from stopword profiles; None when no profile fits."""
    tokens = [w.lower() for w in nlp._WORD.findall(text)] or [""]
    counts = {lang: sum(t in words for t in tokens) for lang, words in _PROFILE_SETS.items()}
    best = max(counts, key=counts.get)
    total = sum(counts.values())
    if counts[best] == 0:
        return None, 0.0
    return best, round(counts[best] / total, 3)


def supported_pairs(model: str) -> set[tuple[str, str]]:
    if model in MODEL_PAIRS:
        return MODEL_PAIRS[model]
    return {(a, b) for a in GENERIC_LANGUAGES for b in GENERIC_LANGUAGES if a != b}


async def _translate_piece(kernel, model, text: str, source: str, target: str) -> str:
    prompt = (f"Translate this {LANGUAGES[source]} text into {LANGUAGES[target]}. Reply with the translation only."
              f"\n\n{text}")
    out = await kernel.infer(messages=[{"role": "user", "content": prompt}], model=model, temperature=0.0,
                             max_tokens=min(1024, nlp.approx_tokens(text) * 3 + 16))
    return out["text"].strip()


async def translate(ctx, text: str, target: str = "en", source: str = "auto", best_effort: bool = False,
                    model: str | None = None) -> dict:
    target = target.lower()
    if target not in LANGUAGES:
        raise ServiceError("EINVAL", f"translate: unknown target '{target}'; languages: "
                                     f"{', '.join(f'{c} ({n})' for c, n in LANGUAGES.items())}")
    detected, confidence = await ctx.cpu(detect, text)
    src = detected if source == "auto" else source.lower()
    if src is None:
        raise ServiceError("EINVAL", "translate: cannot tell the text's language; pass 'source'")
    if src not in LANGUAGES:
        raise ServiceError("EINVAL", f"translate: unknown source '{src}'; languages: {', '.join(LANGUAGES)}")
    model_name = model or ctx.kernel.info.get("default_model")
    if model_name is None:
        raise ServiceError("EINVAL", "translate: this kernel has no default model; pass 'model'")
    result = {"source": src, "target": target, "detected": detected, "detected_confidence": confidence,
              "model": model_name}
    if src == target:
        ctx.emit(text)
        return dict(result, text=text, reliable=True, note=f"the text is already in {LANGUAGES[target]}")
    pairs = supported_pairs(model_name)
    if (src, target) not in pairs and not best_effort:
        can = ", ".join(f"{a}->{b}" for a, b in sorted(pairs)) or "none"
        raise ServiceError("EINVAL", f"translate: model '{model_name}' cannot translate {LANGUAGES[src]} into "
                                     f"{LANGUAGES[target]} reliably (pairs it handles: {can}). Pass best_effort=true "
                                     f"for an unreliable draft, or a larger model as 'model'.")
    pieces = await ctx.cpu(_pieces, text)
    out = []
    for i, piece in enumerate(pieces):
        translated = await _translate_piece(ctx.kernel, model, piece, src, target)
        ctx.emit((" " if i else "") + translated)
        out.append(translated)
    translated = " ".join(out)
    verified = model_name in MODEL_PAIRS and (src, target) in pairs
    landed, _ = await ctx.cpu(detect, translated)
    warnings = []
    if not verified:
        warnings.append(f"{model_name}: this pair is not verified for this model")
    if landed is not None and landed != target:
        warnings.append(f"the output looks like {LANGUAGES.get(landed, landed)}, not {LANGUAGES[target]}")
    return dict(result, text="".join(ctx.emitted), reliable=verified and not warnings, warnings=warnings)


async def languages(ctx, model: str | None = None) -> dict:
    model_name = model or ctx.kernel.info.get("default_model")
    pairs = sorted(supported_pairs(model_name)) if model_name else []
    return {"model": model_name, "languages": LANGUAGES, "pairs": [f"{a}->{b}" for a, b in pairs],
            "verified": model_name in MODEL_PAIRS, "detectable": sorted(_PROFILES)}


def _pieces(text: str) -> list[str]:
    """The text in pieces of about 600 characters, cut between sentences: one generation each."""
    return nlp.pack([s.text for s in nlp.sentences(text)] or [text], 600)


async def detect_task(ctx, text: str) -> dict:
    lang, confidence = await ctx.cpu(detect, text)
    return {"language": lang, "name": LANGUAGES.get(lang), "confidence": confidence}


@hookimpl
def register_services(register):
    register("translate", {
        "text": Task(translate, "Translate text with the generating model, for the language pairs it handles "
                                "(see the languages task); EINVAL for the others unless best_effort=true.",
                     args={"text": {"type": "str", "max_len": 1 << 20},
                           "target": {"type": "str", "default": "en", "max_len": 16,
                                      "doc": f"one of {', '.join(LANGUAGES)}"},
                           "source": {"type": "str", "default": "auto", "max_len": 16,
                                      "doc": "a language code, or auto to detect"},
                           "best_effort": {"type": "bool", "default": False,
                                           "doc": "translate even an unsupported pair; the result says reliable=false"},
                           "model": {"type": "str|null", "nullable": True, "max_len": 4096,
                                     "doc": "default: the kernel's default model"}},
                     stream=True, cost_limit_s=600),     # a generation per 600 characters
        "languages": Task(languages, "The languages and the pairs the model can translate, and whether that was measured.",
                          args={"model": {"type": "str|null", "nullable": True, "max_len": 4096}}),
        "detect": Task(detect_task, "Which language a text is in (stopword profiles; en fr es de it pt nl).",
                       args={"text": {"type": "str", "max_len": 1 << 20}}),
    }, description="Translation for the pairs the model handles, honest refusals for the rest, language detection.")
