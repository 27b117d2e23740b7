"""Pronunciations in the acoustic model's phone set: the CMU dictionary, and eSpeak NG for the rest.

PocketSphinx can only hear words its dictionary spells out in phones. The knowledge base's own
words (product names, codes, made-up words) are often missing from the CMU dictionary; eSpeak NG
has letter-to-sound rules for any spelling, so its IPA is mapped onto the CMU (ARPAbet) phones.
"""

from __future__ import annotations

import os
import re
import threading

from .espeak import ESPEAK

# IPA as eSpeak NG writes it for English -> ARPAbet. Longest match first; stress and length marks go.
_IPA_TO_ARPA = {
    "aɪə": "AY ER", "aʊə": "AW ER", "eə": "EH R", "ɪə": "IH R", "ʊə": "UH R",
    "aɪ": "AY", "aʊ": "AW", "eɪ": "EY", "oʊ": "OW", "əʊ": "OW", "ɔɪ": "OY", "tʃ": "CH", "dʒ": "JH",
    "ɜː": "ER", "ɑː": "AA", "ɔː": "AO", "iː": "IY", "uː": "UW", "ɚ": "ER", "ɝ": "ER", "ɜ": "ER",
    "ə": "AH", "ɐ": "AH", "ʌ": "AH", "ᵻ": "IH", "ɪ": "IH", "i": "IY", "ɛ": "EH", "e": "EH", "æ": "AE",
    "a": "AE", "ɑ": "AA", "ɒ": "AA", "ɔ": "AO", "o": "OW", "ʊ": "UH", "u": "UW",
    "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "g": "G", "ɡ": "G", "f": "F", "v": "V", "θ": "TH",
    "ð": "DH", "s": "S", "z": "Z", "ʃ": "SH", "ʒ": "ZH", "h": "HH", "x": "HH", "ç": "HH", "m": "M",
    "n": "N", "ŋ": "NG", "l": "L", "ɫ": "L", "ɹ": "R", "r": "R", "ɾ": "T", "ʔ": "T", "j": "Y", "w": "W",
}
_IGNORED = set("ˈˌːˑ̩‿-_ ")
_LONGEST = max(len(k) for k in _IPA_TO_ARPA)
_WORD = re.compile(r"^[a-z0-9][a-z0-9']*$")


def ipa_to_arpabet(ipa: str) -> str:
    """'zɛntɹˈɪksoʊ' -> 'Z EH N T R IH K S OW'; symbols with no English phone are dropped."""
    text = "".join(ch for ch in ipa if ch not in _IGNORED)
    phones, i = [], 0
    while i < len(text):
        for size in range(min(_LONGEST, len(text) - i), 0, -1):
            phone = _IPA_TO_ARPA.get(text[i:i + size])
            if phone:
                phones.append(phone)
                i += size
                break
        else:
            i += 1
    return " ".join(phones)


class Lexicon:
    """word -> phones: the CMU dictionary shipped with PocketSphinx (read once), else eSpeak's guess."""

    def __init__(self, path: str | None = None):
        self._path = path
        self._entries: dict[str, list[str]] | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        if self._path is None:
            import pocketsphinx
            self._path = os.path.join(pocketsphinx.get_model_path(), "en-us", "cmudict-en-us.dict")
        return self._path

    def _load(self) -> dict[str, list[str]]:
        with self._lock:
            if self._entries is None:
                entries: dict[str, list[str]] = {}
                with open(self.path, encoding="utf-8") as f:
                    for line in f:
                        word, _, phones = line.strip().partition(" ")
                        if phones:
                            entries.setdefault(re.sub(r"\(\d+\)$", "", word), []).append(phones.strip())
                self._entries = entries
            return self._entries

    def __contains__(self, word: str) -> bool:
        return word in self._load()

    def words(self) -> dict[str, list[str]]:
        return self._load()

    def pronounce(self, word: str) -> tuple[list[str], bool]:
        """(pronunciations, whether they come from the dictionary rather than eSpeak)."""
        known = self._load().get(word)
        if known:
            return known, True
        if not _WORD.match(word):
            return [], False
        phones = ipa_to_arpabet(ESPEAK.phonemes(word))
        return ([phones] if phones else []), False


LEXICON = Lexicon()
