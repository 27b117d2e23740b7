"""infer's structured-generation arguments (ABI 1.1), checked and put in the shape the driver runs.

The kernel checks what it can without the model: the shape of a constraint, of tools and of
tool_choice, token ids of logit_bias, the size of what logprobs will send back. What needs the
model's tokenizer (compiling a schema or a grammar against its vocabulary, ids past its
vocabulary) is the driver's (drivers/constraints.py, drivers/faults.py), which answers EINVAL for
that request alone.

A forced tool call (tool_choice `required` or a named function) becomes a JSON-schema constraint
over `{"name", "arguments"}`, so the call the model writes always parses and names a tool it was
given; `auto` leaves the text free and the driver parses the calls it finds.
"""

from __future__ import annotations

import json
import math
import re

from ..errors import einval

MAX_SHAPE_CHARS = 65536          # a constraint, or all the tools, as JSON
MAX_CHOICES, MAX_CHOICE_CHARS = 256, 1024
MAX_LOGPROB_ENTRIES = 262144     # max_tokens x (1 + top_logprobs): what one result may carry back
MAX_TOKEN_ID = (1 << 31) - 1
MAX_CALLS_PER_MESSAGE = 16
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
SHAPES = ("json_schema", "json", "regex", "grammar", "choice")


def checked_constraint(given: dict | None) -> dict | None:
    """The constraint as the driver compiles it: one shape, a schema as canonical JSON text (so equal
    schemas share one compiled grammar)."""
    if given is None:
        return None
    shapes = [key for key in given if key in SHAPES]
    extra = sorted(str(key) for key in given if key not in SHAPES and key != "strict")
    if len(shapes) != 1 or extra:
        raise einval(f"infer: 'constraint' must hold exactly one of {', '.join(SHAPES)}"
                     + (f" (unknown: {', '.join(extra)[:200]})" if extra else ""))
    shape, value = shapes[0], given[shapes[0]]
    if "strict" in given and (shape != "json_schema" or not isinstance(given["strict"], bool)):
        raise einval("infer: 'constraint.strict' is a bool, and only goes with json_schema")
    if shape == "json_schema":
        value = _schema_text(value, "constraint.json_schema")
        out = {"json_schema": value, "strict": given.get("strict", True)}
    elif shape == "json":
        if value is not True:
            raise einval("infer: 'constraint.json' must be true")
        out = {"json": True}
    elif shape in ("regex", "grammar"):
        if not isinstance(value, str) or not value.strip():
            raise einval(f"infer: 'constraint.{shape}' must be a non-empty string")
        out = {shape: value}
    else:
        if (not isinstance(value, list) or not 0 < len(value) <= MAX_CHOICES
                or not all(isinstance(c, str) and 0 < len(c) <= MAX_CHOICE_CHARS for c in value)):
            raise einval(f"infer: 'constraint.choice' must be 1 to {MAX_CHOICES} non-empty strings "
                         f"of at most {MAX_CHOICE_CHARS} characters")
        out = {"choice": list(value)}
    if len(json.dumps(out)) > MAX_SHAPE_CHARS:
        raise einval(f"infer: 'constraint' holds more than {MAX_SHAPE_CHARS} characters as JSON")
    return out


def _schema_text(value, name: str) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise einval(f"infer: '{name}' is not JSON: {exc}") from None
    if not isinstance(value, (dict, bool)):
        raise einval(f"infer: '{name}' must be a JSON Schema (an object), got {type(value).__name__}")
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise einval(f"infer: '{name}' cannot be written as JSON: {exc}") from None


def checked_tools(tools: list | None) -> list | None:
    """OpenAI's function specs, each with its parameters schema (an empty object's when left out)."""
    if tools is None:
        return None
    out, names = [], set()
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise einval(f"infer: tools[{i}] must be {{type: function, function: {{name, parameters}}}}")
        name = fn.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise einval(f"infer: tools[{i}].function.name must be 1 to 64 of A-Z a-z 0-9 _ -")
        if name in names:
            raise einval(f"infer: tools[{i}].function.name '{name}' is given twice")
        names.add(name)
        description = fn.get("description", "")
        if not isinstance(description, str):
            raise einval(f"infer: tools[{i}].function.description must be a string")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        _schema_text(params, f"tools[{i}].function.parameters")
        out.append({"type": "function", "function": {"name": name, "description": description, "parameters": params}})
    if len(json.dumps(out)) > MAX_SHAPE_CHARS:
        raise einval(f"infer: 'tools' hold more than {MAX_SHAPE_CHARS} characters as JSON")
    return out


def tool_plan(tools: list | None, choice, constraint: dict | None, chat: bool) -> tuple[list | None, str, dict | None]:
    """(tools to render, how the driver parses calls, the constraint to decode with)."""
    if tools is None:
        if choice not in (None, "none"):
            raise einval("infer: 'tool_choice' needs 'tools'")
        return None, "", constraint
    if not chat:
        raise einval("infer: 'tools' need 'messages' (a chat template renders them), not 'prompt'")
    if choice == "none":
        return None, "", constraint
    if choice in (None, "auto"):
        return tools, "auto", constraint
    if constraint is not None:
        raise einval("infer: a forced 'tool_choice' decodes the call's own shape; leave 'constraint' out")
    if choice == "required":
        called = tools
    else:
        name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        if not isinstance(choice, dict) or choice.get("type", "function") != "function" or not isinstance(name, str):
            raise einval("infer: 'tool_choice' must be auto, none, required or {type: function, function: {name}}")
        called = [t for t in tools if t["function"]["name"] == name]
        if not called:
            raise einval(f"infer: 'tool_choice' names '{name[:64]}', which is not in 'tools'")
    schemas = [{"type": "object", "properties": {"name": {"const": t["function"]["name"]},
                                                 "arguments": t["function"]["parameters"]},
                "required": ["name", "arguments"], "additionalProperties": False} for t in called]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    return tools, "forced", {"json_schema": json.dumps(schema, sort_keys=True), "strict": True}


def checked_logit_bias(bias: dict | None) -> list | None:
    """[[token id, bias]]; ids come as ints, or as the decimal strings JSON object keys are."""
    if bias is None:
        return None
    out = []
    for key, value in bias.items():
        token = int(key) if isinstance(key, str) and key.isdigit() and len(key) <= 10 else key
        if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token <= MAX_TOKEN_ID:
            raise einval(f"infer: 'logit_bias' keys are token ids (0 to {MAX_TOKEN_ID}), got {str(key)[:32]!r}")
        if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                or not -100 <= value <= 100):
            raise einval(f"infer: 'logit_bias' values are numbers from -100 to 100, got {str(value)[:32]!r}")
        out.append([token, float(value)])
    return out


def checked_logprobs(logprobs: bool, top: int, max_tokens: int) -> None:
    if top and not logprobs:
        raise einval("infer: 'top_logprobs' needs 'logprobs' true")
    if logprobs and max_tokens * (1 + top) > MAX_LOGPROB_ENTRIES:
        raise einval(f"infer: 'logprobs' with max_tokens x (1 + top_logprobs) over {MAX_LOGPROB_ENTRIES} "
                     f"({max_tokens} x {1 + top}); lower 'max_tokens' or 'top_logprobs'")


def structured_payload(args: dict, chat: bool) -> dict:
    """The Submit fields of structured generation, from infer's checked arguments."""
    constraint = checked_constraint(args["constraint"])
    tools, parse, constraint = tool_plan(checked_tools(args["tools"]), args["tool_choice"], constraint, chat)
    checked_logprobs(args["logprobs"], args["top_logprobs"], args["max_tokens"])
    if args["min_tokens"] > args["max_tokens"]:
        raise einval(f"infer: 'min_tokens' ({args['min_tokens']}) is over 'max_tokens' ({args['max_tokens']})")
    return {"constraint": constraint, "tools": tools, "tool_parse": parse, "logprobs": args["logprobs"],
            "top_logprobs": args["top_logprobs"], "presence_penalty": args["presence_penalty"],
            "frequency_penalty": args["frequency_penalty"], "repetition_penalty": args["repetition_penalty"],
            "logit_bias": checked_logit_bias(args["logit_bias"]), "min_tokens": args["min_tokens"]}
