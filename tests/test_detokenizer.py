"""The detokenizer, specified with a byte tokenizer: every byte is a token, so characters
outside ASCII always span several tokens."""

from __future__ import annotations

from llmos.drivers.detokenizer import TextStream


class ByteTokenizer:
    """Token i is byte i. Like SentencePiece, decoding drops the text's leading space."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: list[int], **_) -> str:
        text = bytes(ids).decode("utf-8", errors="replace")
        return text[1:] if text.startswith(" ") else text


TOKENIZER = ByteTokenizer()


def stream_of(text: str, prompt: str = "", stop=()) -> tuple[list[str], bool, TextStream]:
    """Push text's tokens through a fresh stream until it reports a stop string."""
    stream = TextStream(TOKENIZER, TOKENIZER.encode(prompt), list(stop))
    deltas = []
    for token in TOKENIZER.encode(text):
        delta, stopped = stream.push(token)
        deltas.append(delta)
        if stopped:
            return deltas, True, stream
    return deltas, False, stream


def test_text_never_splits_a_multibyte_character():
    text = "Café naïve 日本語 😀 über"
    deltas, _, stream = stream_of(text)
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) + stream.flush() == text


def test_a_character_is_shown_as_soon_as_its_last_byte_arrives():
    deltas, _, _ = stream_of("日a")
    assert deltas == ["", "", "日", "a"]


def test_the_end_of_the_prompt_gives_the_first_token_its_context():
    deltas, _, _ = stream_of(" there", prompt="Hi")
    assert "".join(deltas) == " there"   # decoded alone, the leading space would be dropped


def test_a_stop_string_ends_the_stream_and_is_not_shown():
    deltas, stopped, _ = stream_of("Rome is the capital of Italy, and", stop=["capital"])
    assert stopped and "".join(deltas) == "Rome is the "


def test_text_that_may_begin_a_stop_string_is_held_back():
    deltas, stopped, _ = stream_of("Rome is the capital of", stop=["capital of Italy"])
    assert not stopped and "".join(deltas) == "Rome is the "


def test_held_back_text_is_shown_once_it_cannot_begin_a_stop_string():
    deltas, stopped, _ = stream_of("the capital of France", stop=["capital of Italy"])
    assert not stopped and "".join(deltas) == "the capital of France"


def test_flush_shows_held_back_text_when_the_sequence_ends():
    deltas, _, stream = stream_of("Rome is the capital", stop=["capital of Italy"])
    assert "".join(deltas) + stream.flush() == "Rome is the capital"
