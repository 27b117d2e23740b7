"""The detokenizer: a sequence's generated token ids, as text that is safe to show as it comes.

Tokens and characters do not line up: one character may take several byte-level tokens, and a
tokenizer may decode a token differently at the start of a text than after other tokens. So a
stream decodes a small window of recent tokens and shows only whole characters; and text that
may be the start of a stop string is held back until it is clear that it is not one.
"""

from __future__ import annotations


class TextStream:
    """Generated token ids to text deltas: whole characters only, stop strings cut off.

    Decodes a small window of recent tokens (starting a few prompt tokens back, so tokenizers
    that drop a leading space see the same context every time) and waits while the text ends in
    an incomplete character. Text that could be the start of a stop string is held back.
    """

    def __init__(self, tokenizer, prompt_ids: list[int], stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop or [] if s]
        self.ids = list(prompt_ids[-4:])
        self.prefix = 0
        self.read = len(self.ids)
        self.held = ""

    def push(self, token: int) -> tuple[str, bool]:
        """Text that may be shown now, and whether a stop string was reached."""
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        new = ""
        if len(after) > len(before) and not after.endswith("\ufffd"):
            new = after[len(before):]
            self.prefix, self.read = self.read, len(self.ids)
        text = self.held + new
        cut = min((i for s in self.stop if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.held = ""
            return text[:cut], True
        keep = self._partial_stop(text)
        self.held = text[len(text) - keep:]
        return text[:len(text) - keep], False

    def flush(self) -> str:
        """All text not yet shown, incomplete characters included: the sequence has ended."""
        rest = self._decode(self.ids[self.prefix:])[len(self._decode(self.ids[self.prefix:self.read])):]
        text, self.held = self.held + rest, ""
        self.prefix = self.read = len(self.ids)
        return text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _partial_stop(self, text: str) -> int:
        """Length of the longest end of text that begins some stop string."""
        for k in range(min(len(text), max((len(s) - 1 for s in self.stop), default=0)), 0, -1):
            if any(s.startswith(text[-k:]) for s in self.stop):
                return k
        return 0
