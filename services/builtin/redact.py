"""redact: replace personal data with typed placeholders ([EMAIL_1], [CARD_1], [NAME_2]...).

Deterministic detectors do the exact work: emails, phone numbers (Google's libphonenumber
rules, through `phonenumbers`), payment cards (Luhn), IBANs (the ISO 13616 registry's length
and format per country, then mod-97), US social security numbers (the SSA's rules) and IP
addresses; the checks come from python-stdnum. Names are found by a heuristic (titles, cue
phrases such as "my name is", greetings and sign-offs, and a list of common first names followed
by a capitalized surname): a 135M-parameter model tags names less reliably than that, and a
redactor must not invent or skip spans at random. The same value always gets the same
placeholder, so a redacted text still reads coherently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers
from stdnum import iban, luhn
from stdnum.us import ssn

from llmos.services import ServiceError, Task, hookimpl
from llmos.services.findall import whole_occurrences
from llmos.services.workers import checkpoint

TYPES = ("EMAIL", "PHONE", "CARD", "IBAN", "SSN", "IP", "NAME")
# Numbers written without a country code are read in these countries' national formats: the
# two that English text uses most, which cannot be confused (a NANP number never starts with 0,
# a British one always does). Numbers written with + are found whatever this says.
PHONE_REGIONS = ("US", "GB")
MAX_REGIONS = 16          # each one is a pass of the phone matcher over the whole text

# Every pattern is linear in the text, adversarial text included: a match may start only where a
# run it would read begins (the lookbehinds), and no two adjacent parts can take the same spaces.
_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_SSN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")
_IP = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?!\d|\.\d)")
# Words that say a phone number follows (see phone_spans).
_PHONE_CUE = re.compile(r"(?:phone|call|tel|mobile|cell|whatsapp|sms|text me|ring me|(?:my|his|her|your|our) number)"
                        r"\D{0,15}$", re.I)

_TITLE = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Madam|Mme|Mlle|Herr|Frau)\.?"
_CAP = r"[A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)?"
_SURNAME = rf"(?:(?:van|von|de|da|di|del|der|le|la|O'|Mc|Mac)\s?)?{_CAP}"
_NAME_AFTER_TITLE = re.compile(rf"\b{_TITLE}\s+((?:{_CAP}\s+)?{_SURNAME})")
_NAME_AFTER_CUE = re.compile(
    rf"(?:\b[Mm]y name is|\b[Nn]ame:|\b[Tt]his is|\b[Ii] am|\b[Ii]'m|\b[Ss]igned,?|\b[Cc]ontact|\b[Aa]sk for|"
    rf"\b[Ss]peak(?:ing)? (?:to|with)|"
    rf"\b(?:[Dd]ear|[Hh]i|[Hh]ello|[Tt]hanks|[Tt]hank you|[Rr]egards|[Ss]incerely|[Cc]heers|[Bb]est),?)\s+"
    rf"((?:{_CAP})(?:\s+{_SURNAME})?)")
_SIGNOFF = re.compile(rf"(?m)^[^\S\n]*(?:Regards|Best regards|Kind regards|Sincerely|Thanks|Thank you|Cheers|Best),?"
                      rf"[^\S\n]*\n\s*((?:{_CAP})(?:\s+{_SURNAME})?)\s*(?:\n|$)")
_FIRST_THEN_SURNAME = re.compile(rf"\b({_CAP})\s+({_SURNAME})\b")

FIRST_NAMES = frozenset("""
aaron adam adrian ahmed aisha alan albert alejandro alex alexander alexandra alice alicia amanda amelia amir amy ana
andrea andreas andrew angela anna anne anthony antonio arjun arthur ava barbara ben benjamin beth betty brian bruce
camille carlos carmen carol caroline catherine charles charlie charlotte chen chloe chris christian christina
christopher claire clara daniel david deborah dennis diana diego dmitri donald dorothy edward elena elizabeth ella
emily emma eric erik ethan eva fatima felix fernando fiona francesca francis frank gabriel gary george giulia grace
greg gregory hannah hans harry heather helen henry hiroshi hugo ian igor isabella ivan jack jacob james jan jane
janet jason javier jennifer jessica jim joan joe john jonathan jorge jose joseph joshua juan julia julie justin karen
katherine kathleen keith kenji kevin kim laura lauren leo liam linda lisa liu lucas lucy luis luke maria marie marina
mark marta martin mary matteo matthew maya megan mei michael michelle miguel mohammed mohammad muhammad nancy natalia
nathan nicholas nicole noah nora olga oliver olivia omar oscar pablo patricia patrick paul paula pedro peter philip
pierre priya rachel rafael rahul raj ramon rebecca richard robert roberto ryan samuel sandra sara sarah scott sean
sebastian sergei sharon sophia sophie stefan stephanie stephen steven susan thomas timothy tom tyler valentina
victor victoria vincent wang wei william yuki yusuf zoe
""".split())
# Capitalized words that follow the cues above but are not names.
_NOT_NAMES = frozenset("""
i the a an this that there here it we you they he she my our your his her their team support customer service
mr mrs ms miss mx dr prof mme mlle herr frau
all everyone everybody sir madam guys folks again so very just not sure sorry happy glad good great fine okay ok
afraid writing calling contacting looking trying having going still also really please thanks hello hi dear
monday tuesday wednesday thursday friday saturday sunday january february march april may june july august
september october november december english french spanish german
""".split())


@dataclass
class Finding:
    type: str
    start: int
    end: int
    value: str


def iban_ok(candidate: str) -> bool:
    """The registry's format for the country and the mod-97 checksum; not each country's own
    extra rules, which need bank lists that go stale (a real Belgian IBAN of a bank stdnum does
    not know would be missed)."""
    return iban.is_valid(candidate, check_country=False)


def longest_iban(value: str) -> str:
    """The longest prefix of value (ending on a character, not a space) that is a valid IBAN, or "".
    The pattern is greedy over spaces, so an IBAN may end before its match does. The check digits of
    every prefix are worked out in one pass (ISO 7064 mod 97-10, as iban_ok does them) and only the
    prefixes they fit are validated: validating every prefix cost 30 checksums a match."""
    chars = [(i, str(int(c, 36))) for i, c in enumerate(value) if c != " "]
    head = "".join(d for _, d in chars[:4])
    rest, fits = 0, []
    for k in range(4, len(chars)):
        rest = (rest * 10 ** len(chars[k][1]) + int(chars[k][1])) % 97
        if (rest * 10 ** len(head) + int(head)) % 97 == 1:
            fits.append(chars[k][0] + 1)
    return next((value[:end] for end in reversed(fits) if iban_ok(value[:end])), "")


def phone_spans(text: str, regions: tuple[str, ...] = PHONE_REGIONS):
    """(start, end) of each phone number, national ones read in `regions`.

    A number the matcher calls valid (an assigned range, formatted as the country writes it)
    counts unless it is a bare run of digits, as likely an order number. A cue word before a
    number ("call", "mobile"...) is enough for one that is merely possible: texts and tests use
    ranges kept unassigned for fiction (07700 900xxx), while possible numbers without a cue
    include prices, dates and the tails of account numbers.
    """
    cued = lambda start: _PHONE_CUE.search(text[max(0, start - 30):start])
    for region in regions:
        for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            checkpoint()        # the slowest detector (~3 us a character): stop when the call is over
            if not m.raw_string.isdigit() or cued(m.start):
                yield m.start, m.end
        for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.POSSIBLE):
            checkpoint()
            if cued(m.start):
                yield m.start, m.end


def _is_name(candidate: str) -> bool:
    parts = candidate.split()
    return bool(parts) and all(p.lower().strip("'") not in _NOT_NAMES for p in parts)


def find_pii(text: str, types: tuple[str, ...] = TYPES, regions: tuple[str, ...] = PHONE_REGIONS) -> list[Finding]:
    """Every finding, non-overlapping, in text order (earlier detectors win overlaps). Linear in the text."""
    found: list[Finding] = []
    taken = bytearray(len(text))      # 1 where a finding is: an overlap is a find, not a scan of the findings

    def add(kind: str, start: int, end: int) -> None:
        if kind in types and taken.find(1, start, end) < 0:
            found.append(Finding(kind, start, end, text[start:end]))
            taken[start:end] = b"\x01" * (end - start)

    for m in _EMAIL.finditer(text):
        add("EMAIL", m.start(), m.end())
    for m in _IBAN.finditer(text):
        value = longest_iban(m.group(0))
        if value:
            add("IBAN", m.start(), m.start() + len(value))
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        if 13 <= len(digits) <= 19 and luhn.is_valid(digits) and len(set(digits)) > 1:
            add("CARD", m.start(), m.end())
    for m in _SSN.finditer(text):
        if ssn.is_valid(m.group(0)):
            add("SSN", m.start(), m.end())
    for m in _IP.finditer(text):
        add("IP", m.start(), m.end())
    if "PHONE" in types:
        for start, end in phone_spans(text, regions):
            add("PHONE", start, end)
    for pattern in (_NAME_AFTER_TITLE, _SIGNOFF, _NAME_AFTER_CUE):
        for m in pattern.finditer(text):
            if _is_name(m.group(1)):
                add("NAME", m.start(1), m.end(1))
    for m in _FIRST_THEN_SURNAME.finditer(text):
        if m.group(1).lower() in FIRST_NAMES and _is_name(m.group(0)):
            add("NAME", m.start(), m.end())
    # a known first name standing alone ("ask Maria"), but not at a sentence start where it may be a word
    for m in re.finditer(rf"(?<=[a-z,;:] )({_CAP})\b", text):
        if m.group(1).lower() in FIRST_NAMES:
            add("NAME", m.start(1), m.end(1))
    # a value found once is redacted everywhere it appears, and so is a found name's first name alone:
    # all of them looked for in one pass over the text (a search per value was quadratic)
    wanted = []
    for kind, value in dict.fromkeys((f.type, f.value) for f in found):
        parts = [value]
        if kind == "NAME":
            parts += [p for p in value.split() if p.lower() in FIRST_NAMES or len(value.split()) == 1]
        wanted += [(kind, part) for part in parts]
    spans = whole_occurrences(text, list(dict.fromkeys(part for _, part in wanted)))
    for kind, part in dict.fromkeys(wanted):       # once each: a second pass over a part changes nothing
        for start, end in spans[part]:
            add(kind, start, end)
    return sorted(found, key=lambda f: f.start)


def redact_text(text: str, types: tuple[str, ...] = TYPES,
                regions: tuple[str, ...] = PHONE_REGIONS) -> tuple[str, list[dict]]:
    findings = find_pii(text, types, regions)
    numbers: dict[tuple[str, str], str] = {}
    counters: dict[str, int] = {}
    out, pos, report = [], 0, []
    for f in findings:
        canon = re.sub(r"[\s.()-]", "", f.value.lower())
        key = (f.type, canon)
        if key not in numbers:
            counters[f.type] = counters.get(f.type, 0) + 1
            numbers[key] = f"[{f.type}_{counters[f.type]}]"
        out.append(text[pos:f.start])
        out.append(numbers[key])
        pos = f.end
        report.append({"type": f.type, "start": f.start, "end": f.end, "placeholder": numbers[key]})
    out.append(text[pos:])
    return "".join(out), report


async def redact(ctx, text: str, types: list | None = None, regions: list | None = None) -> dict:
    wanted = tuple(t.upper() for t in types) if types else TYPES
    unknown = set(wanted) - set(TYPES)
    if unknown:
        raise ServiceError("EINVAL", f"redact: unknown type(s) {', '.join(sorted(unknown))}; known: {', '.join(TYPES)}")
    countries = tuple(str(r).upper() for r in regions) if regions else PHONE_REGIONS
    unknown = set(countries) - phonenumbers.SUPPORTED_REGIONS
    if unknown:
        raise ServiceError("EINVAL", f"redact: unknown region(s) {', '.join(sorted(unknown))}; "
                                     f"use ISO 3166 country codes such as US, GB, FR")
    redacted, findings = await ctx.cpu(redact_text, text, wanted, countries)
    counts: dict[str, int] = {}
    for f in findings:
        counts[f["type"]] = counts.get(f["type"], 0) + 1
    return {"text": redacted, "findings": findings, "counts": counts}


@hookimpl
def register_services(register):
    register("redact", {
        "text": Task(redact, "Replace personal data (emails, phones, cards, IBANs, SSNs, IPs, names) with typed "
                             "placeholders like [EMAIL_1]; returns the redacted text and each finding's type and span "
                             "in the original text.",
                     args={"text": {"type": "str", "max_len": 4 << 20, "doc": "the text to redact"},
                           "types": {"type": "list|null", "nullable": True, "max_items": len(TYPES), "max_len": 16,
                                     "doc": f"only these types (default all): {', '.join(TYPES)}"},
                           "regions": {"type": "list|null", "nullable": True, "max_items": MAX_REGIONS, "max_len": 8,
                                       "doc": "countries whose national phone formats to read (default "
                                              f"{', '.join(PHONE_REGIONS)}); numbers with + are found anyway"}},
                     cost_limit_s=120),      # the phone matcher reads ~3 us a character, once per region
    }, description="Find personal data by checked patterns (phone rules, Luhn, IBAN, SSN) and a names heuristic, "
                   "and replace it.")
