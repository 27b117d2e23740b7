"""Tool calls: functions rendered into the prompt, and the calls the model writes parsed back out.

A model whose chat template takes `tools` gets them from transformers' apply_chat_template, with
its own syntax for a call, known by its template: Hermes and Qwen write `<tool_call>{json}
</tool_call>`, Mistral `[TOOL_CALLS][{json}, ...]`, Llama 3.1 a bare JSON object `{"name",
"parameters"}`. A template that knows no tools (the default model's among them) gets them as a
system message asking for the Hermes syntax, and earlier calls and results written back in it, so
a tool loop renders on any chat model.

While a request with tools generates, ToolCallText holds back the text from where a call begins
(and any end of text that could be the start of one), so the stream shows the model's prose and
never half a call; at the end the held text is parsed into calls, or let out as text if it is not
one. A forced call (tool_choice required or named) is decoded under a JSON-schema constraint over
`{name, arguments}` (kernel/syscalls/structured.py) and its whole text is that call.
"""

from __future__ import annotations

import json
import re
import secrets

HERMES, MISTRAL, LLAMA, JSON_ONLY = "hermes", "mistral", "llama", "json"
OPENERS = {HERMES: "<tool_call>", MISTRAL: "[TOOL_CALLS]", LLAMA: "<|python_tag|>", JSON_ONLY: ""}
CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
FALLBACK_PROMPT = (      # short: a small model's context is small
    "You may call these functions:\n<tools>\n{tools}\n</tools>\nTo call one, answer only with "
    "<tool_call>{{\"name\": ..., \"arguments\": {{...}}}}</tool_call>. Otherwise answer in plain text.")


def family(tokenizer) -> str | None:
    """The call syntax a chat template writes, or None when the template takes no tools."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(template, str) or "tools" not in template:
        return None
    for name in (HERMES, MISTRAL, LLAMA):
        if OPENERS[name] in template:
            return name
    return JSON_ONLY


def render_messages(tokenizer, messages: list[dict], tools: list | None) -> tuple[list[dict], dict]:
    """(messages, extra apply_chat_template arguments) for the template at hand."""
    if family(tokenizer) is not None:
        return [_native(m) for m in messages], ({"tools": tools} if tools else {})
    out = [_plain(m) for m in messages]
    if tools:
        listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        note = FALLBACK_PROMPT.format(tools=listing)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + note}
        else:
            out.insert(0, {"role": "system", "content": note})
    return out, {}


def _native(message: dict) -> dict:
    """transformers' shape: a call's arguments as a mapping where they parse."""
    if "tool_calls" not in message:
        return message
    calls = [{"type": "function", "id": c["id"],
              "function": {"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])}}
             for c in message["tool_calls"]]
    return {**message, "tool_calls": calls}


def _plain(message: dict) -> dict:
    """A template with no tools: calls and results as text, results as the user's turn."""
    if message["role"] == "tool":
        return {"role": "user", "content": f"<tool_response>\n{message['content']}\n</tool_response>"}
    if "tool_calls" not in message:
        return message
    calls = "\n".join("<tool_call>\n" + json.dumps({"name": c["function"]["name"],
                                                    "arguments": _arguments(c["function"]["arguments"])},
                                                   ensure_ascii=False) + "\n</tool_call>"
                      for c in message["tool_calls"])
    return {"role": "assistant", "content": (message["content"] + "\n" if message["content"] else "") + calls}


def _arguments(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


class ToolCallText:
    """The text of one generation with tools: prose passes, calls are held and parsed at the end."""

    def __init__(self, mode: str, syntax: str | None):
        self.mode = mode                   # "auto" | "forced"
        self.opener = OPENERS[syntax or HERMES]
        self.syntax = syntax or HERMES
        self.shown = 0                     # characters of text let out
        self.text = ""
        self.calling = mode == "forced"

    def push(self, delta: str) -> str:
        """What of the text so far may be shown now."""
        self.text += delta
        if self.calling:
            return ""
        if self.shown == 0 and self.syntax in (LLAMA, JSON_ONLY) and self.text.lstrip().startswith("{"):
            self.calling = True            # a bare JSON call: it is the whole answer
            return ""
        start = self.text.find(self.opener, self.shown) if self.opener else -1
        if start >= 0:
            self.calling = True
            return self._show(start)
        return self._show(len(self.text) - _partial(self.text, self.opener))

    def finish(self) -> tuple[str, list[dict]]:
        """(text still to show, the calls) at the end of the generation."""
        held = self.text[self.shown:]
        calls = parse_calls(held, self.syntax, forced=self.mode == "forced") if self.calling else []
        if calls:
            return "", calls
        self.shown = len(self.text)
        return held, []

    def _show(self, upto: int) -> str:
        out = self.text[self.shown:upto]
        self.shown = max(self.shown, upto)
        return out


def _partial(text: str, opener: str) -> int:
    """How many characters at the end of text could begin the opener."""
    for n in range(min(len(opener) - 1, len(text)), 0, -1):
        if opener.startswith(text[-n:]):
            return n
    return 0


def parse_calls(text: str, syntax: str, forced: bool = False) -> list[dict]:
    """OpenAI-shaped calls found in text ([] where it holds none that parse)."""
    if forced or syntax in (LLAMA, JSON_ONLY):
        objects = [_json(text.strip().removeprefix(OPENERS[LLAMA]))]
    elif syntax == MISTRAL:
        found = _json(text.split(OPENERS[MISTRAL], 1)[-1].strip())
        objects = found if isinstance(found, list) else [found]
    else:
        objects = [_json(block) for block in CALL_BLOCK.findall(text)]
    calls = []
    for obj in objects:
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return []
        arguments = obj.get("arguments", obj.get("parameters", {}))
        calls.append({"id": "call_" + secrets.token_hex(12), "type": "function",
                      "function": {"name": obj["name"],
                                   "arguments": arguments if isinstance(arguments, str)
                                   else json.dumps(arguments, ensure_ascii=False)}})
    return calls


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None
