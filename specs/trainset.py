"""What a fine-tune example is: the one rule the kernel's `tune` and the `llmos tune` command both check.

An example is a chat, `{"messages": [{role, content}, ...]}` with at least one assistant turn
(the turns the model learns to write), or a pair `{"prompt": str, "completion": str}` (it
learns the completion). A data file is JSON Lines, one example a line; blank lines are skipped.
Bad examples are reported by their 1-based line (or position), so a user can fix the file.
"""

from __future__ import annotations

import json

ROLES = ("system", "user", "assistant", "tool")
MAX_REPORTED = 10      # bad lines named in one message; the count says how many more


def example_problem(example) -> str | None:
    """Why `example` cannot be trained on, or None if it can."""
    if not isinstance(example, dict):
        return "not a JSON object"
    if "messages" in example:
        if "prompt" in example or "completion" in example:
            return "has both 'messages' and 'prompt'/'completion'"
        messages = example["messages"]
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty list"
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                return f"messages[{i}] must be an object with string 'role' and 'content'"
            if m["role"] not in ROLES:
                return f"messages[{i}].role must be one of {', '.join(ROLES)}"
        if not any(m["role"] == "assistant" and m["content"] for m in messages):
            return "no assistant message with content: nothing to learn"
        return None
    if isinstance(example.get("prompt"), str) and isinstance(example.get("completion"), str):
        return None if example["completion"] else "'completion' is empty: nothing to learn"
    return "needs 'messages' (a chat) or string 'prompt' and 'completion'"


def check_examples(examples: list, first_line: int = 1) -> list[tuple[int, str]]:
    """(line, why) of every bad example; examples[0] is line `first_line`."""
    return [(first_line + i, why) for i, e in enumerate(examples) if (why := example_problem(e)) is not None]


def parse_jsonl(text: str) -> tuple[list[dict], list[tuple[int, str]]]:
    """The examples of a JSONL file's text, and (line, why) for each bad line."""
    examples, bad = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            example = json.loads(line)
        except ValueError as exc:
            bad.append((number, f"not JSON ({exc.msg})"))
            continue
        why = example_problem(example)
        if why is None:
            examples.append(example)
        else:
            bad.append((number, why))
    return examples, bad


def describe_bad(bad: list[tuple[int, str]], where: str = "line") -> str:
    """'line 3: why; line 7: why (and 4 more bad lines)'."""
    shown = "; ".join(f"{where} {n}: {why}" for n, why in bad[:MAX_REPORTED])
    more = len(bad) - MAX_REPORTED
    return shown + (f" (and {more} more bad {where}s)" if more > 0 else "")
