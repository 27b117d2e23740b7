"""The syscall table (syscalls.toml) as Python: argument validation and the rendered reference.

The kernel validates with `validate`, `render_markdown` writes specs/syscalls.md, and a test
holds the client library's methods to `SYSCALLS`, so the three read one source and cannot drift.
`compile_args` is the one compiler of argument declarations: the table's, and the `args` of
every service plugin's tasks, which are checked by the same validator as a syscall's.

Every argument of the table (and of the built-in services' tasks) is bounded where it is declared:
a number has a min and a max, a str or bytes a max_len, a list or map a max_items; `compile_args`
with bounded=True refuses a declaration without them, so a new syscall cannot forget one. An
argument typed `any` is bounded by the frame alone (max_frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .protocol import ABI_MINOR, ABI_VERSION, ERRNOS

# Errors any syscall can answer; the table lists only the ones particular to each call.
COMMON_ERRORS = ("EINVAL", "EPERM", "ENOSYS", "ECANCELED", "EAGAIN")

_PY_TYPES = {
    "str": (str,),
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "bytes": (bytes,),
    "list": (list, tuple),
    "map": (dict,),
}
TYPES = tuple(_PY_TYPES) + ("any", "null")
SCHEMA_KEYS = ("type", "default", "nullable", "required", "doc", "min", "max", "max_len", "max_items", "choices")
_NUMERIC, _TEXT, _ITEMS = {"int", "float"}, {"str", "bytes"}, {"list", "map"}
_REQUIRED = object()


class ArgError(ValueError):
    """Arguments that do not match the syscall's declaration (answered with EINVAL)."""


class SchemaError(ValueError):
    """A malformed argument declaration (in syscalls.toml or a plugin's Task.args); says how to fix it."""


@dataclass(frozen=True)
class Arg:
    name: str
    types: tuple[str, ...]
    default: Any = _REQUIRED
    doc: str = ""
    min: float | None = None
    max: float | None = None
    max_len: int | None = None      # characters of a str, bytes of a bytes: the argument's or each list item's
    max_items: int | None = None    # items of a list, entries of a map
    choices: tuple | None = None
    # the Python classes `types` accept, worked out once: check() runs on every syscall
    _classes: tuple | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        classes = None if "any" in self.types else tuple(c for t in self.types if t != "null" for c in _PY_TYPES[t])
        object.__setattr__(self, "_classes", classes)

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def check(self, syscall: str, value: Any) -> Any:
        if value is None:
            if "null" in self.types:
                return None
            raise ArgError(f"{syscall}: argument '{self.name}' must not be nil")
        classes = self._classes
        if classes is not None and (not isinstance(value, classes) or (value.__class__ is bool and bool not in classes)):
            wanted = " or ".join(t for t in self.types if t != "null")     # msgpack keeps bools apart from ints
            raise ArgError(f"{syscall}: argument '{self.name}' must be {wanted}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ArgError(f"{syscall}: argument '{self.name}' must be finite")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.min is not None and value < self.min:
                raise ArgError(f"{syscall}: argument '{self.name}' must be >= {self.min}, got {value}")
            if self.max is not None and value > self.max:
                raise ArgError(f"{syscall}: argument '{self.name}' must be <= {self.max}, got {value}")
            if "float" in self.types and isinstance(value, int):
                value = float(value)
        if self.max_len is not None and isinstance(value, (str, bytes)) and len(value) > self.max_len:
            raise ArgError(f"{syscall}: argument '{self.name}' is longer than {self.max_len}")
        if isinstance(value, (list, tuple, dict)):
            self._check_items(syscall, value)
        if self.choices is not None and value not in self.choices:
            raise ArgError(f"{syscall}: argument '{self.name}' must be one of "
                           f"{', '.join(map(str, self.choices))}, got {value!r}")
        if isinstance(value, tuple):
            value = list(value)
        return value

    def _check_items(self, syscall: str, value: list | tuple | dict) -> None:
        if self.max_items is not None and len(value) > self.max_items:
            what = "entries" if isinstance(value, dict) else "items"
            raise ArgError(f"{syscall}: argument '{self.name}' has more than {self.max_items} {what}")
        if self.max_len is not None and not isinstance(value, dict):
            for i, item in enumerate(value):
                if isinstance(item, (str, bytes)) and len(item) > self.max_len:
                    raise ArgError(f"{syscall}: argument '{self.name}'[{i}] is longer than {self.max_len}")


def compile_args(where: str, schema: Any, bounded: bool = False) -> dict[str, Arg]:
    """Argument declarations, `{name: {type, default or nullable or required, doc, min, max,
    max_len, max_items, choices}}`, compiled into Args; SchemaError naming `where` and the argument
    if one is malformed, or (bounded) leaves a size or a number unbounded."""
    if not isinstance(schema, dict):
        raise SchemaError(f"{where}: args must be a map of argument name -> schema, got {type(schema).__name__}")
    args = {name: _compile_arg(f"{where} argument '{name}'", name, spec) for name, spec in schema.items()}
    if bounded:
        for name, arg in args.items():
            _check_bounded(f"{where} argument '{name}'", arg)
    return args


def _check_bounded(where: str, arg: Arg) -> None:
    """SchemaError unless every value the argument takes has a declared limit, and its default keeps it."""
    types = set(arg.types)
    if types & _NUMERIC and (arg.min is None or arg.max is None):
        raise SchemaError(f"{where}: a number needs both min and max (what the engine and the model can "
                          f"represent: int64, a vocabulary, a context length)")
    if types & _TEXT and arg.max_len is None and arg.choices is None:
        raise SchemaError(f"{where}: a str or bytes needs a max_len (or choices)")
    if types & _ITEMS and arg.max_items is None:
        raise SchemaError(f"{where}: a list or map needs a max_items")
    if not arg.required and arg.default is not None:
        try:
            arg.check(where, arg.default)
        except ArgError as exc:
            raise SchemaError(f"{where}: its default breaks its own bounds ({exc})") from None


def _compile_arg(where: str, name: str, spec: Any) -> Arg:
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise SchemaError(f"{where}: the schema must be a map with a 'type', e.g. {{'type': 'str'}}")
    unknown = set(spec) - set(SCHEMA_KEYS)
    if unknown:
        raise SchemaError(f"{where}: unknown schema key(s) {', '.join(sorted(unknown))}; "
                          f"use {', '.join(sorted(SCHEMA_KEYS))}")
    types = tuple(spec["type"].split("|"))
    if not set(types) <= set(TYPES):
        raise SchemaError(f"{where}: unknown type in '{spec['type']}'; use {', '.join(sorted(TYPES))}")
    if spec.get("required") and ("default" in spec or spec.get("nullable")):
        raise SchemaError(f"{where}: 'required' and a default contradict each other; keep one")
    choices = spec.get("choices")
    if choices is not None and (not isinstance(choices, (list, tuple)) or not choices):
        raise SchemaError(f"{where}: 'choices' must be a non-empty list of the allowed values")
    for key in ("min", "max", "max_len", "max_items"):
        bound = spec.get(key)
        if bound is not None and (not isinstance(bound, (int, float)) or isinstance(bound, bool)
                                  or not math.isfinite(bound) or (key.startswith("max_") and bound < 0)):
            raise SchemaError(f"{where}: '{key}' must be a finite number{' >= 0' if key.startswith('max_') else ''}")
    if spec.get("min") is not None and spec.get("max") is not None and spec["min"] > spec["max"]:
        raise SchemaError(f"{where}: its min {spec['min']} is over its max {spec['max']}")
    default = None if spec.get("nullable") else spec.get("default", _REQUIRED)
    if spec.get("nullable") and "null" not in types:
        types += ("null",)
    return Arg(name, types, default, spec.get("doc", ""), spec.get("min"), spec.get("max"), spec.get("max_len"),
               spec.get("max_items"), None if choices is None else tuple(choices))


@dataclass(frozen=True)
class Syscall:
    name: str
    cap: str
    doc: str
    result: str
    errors: dict[str, str]
    stream: bool
    args: dict[str, Arg] = field(default_factory=dict)
    before_hello: bool = False    # callable on a connection that is not a process yet

    def validate(self, args: Any) -> dict[str, Any]:
        """Check `args` against the declaration; return them with defaults filled in."""
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ArgError(f"{self.name}: 'args' must be a map, got {type(args).__name__}")
        if args.keys() - self.args.keys():
            unknown = sorted(map(str, args.keys() - self.args.keys()))
            raise ArgError(f"{self.name}: unknown argument(s) {', '.join(unknown)}; "
                           f"it takes {', '.join(self.args) or 'none'}")
        out = {}
        for name, arg in self.args.items():
            if name in args:
                out[name] = arg.check(self.name, args[name])
            elif arg.required:
                raise ArgError(f"{self.name}: missing required argument '{name}'")
            else:
                out[name] = arg.default
        return out


def _load() -> dict[str, Syscall]:
    text = resources.files(__package__).joinpath("syscalls.toml").read_text()
    table = tomllib.loads(text)
    if table["version"] != ABI_VERSION:
        raise RuntimeError(f"syscalls.toml is ABI {table['version']}, protocol.py says {ABI_VERSION}")
    if table.get("minor", 0) != ABI_MINOR:
        raise RuntimeError(f"syscalls.toml is ABI minor {table.get('minor', 0)}, protocol.py says {ABI_MINOR}")
    calls = {}
    for name, spec in table["syscalls"].items():
        args = compile_args(f"syscalls.toml: {name}", spec.get("args", {}), bounded=True)
        for errno in spec["errors"]:
            if errno not in ERRNOS:
                raise RuntimeError(f"syscalls.toml: {name} lists unknown errno {errno}")
        calls[name] = Syscall(name, spec["cap"], spec["doc"], spec["result"], dict(spec["errors"]),
                              bool(spec.get("stream", False)), args, bool(spec.get("before_hello", False)))
    return calls


SYSCALLS: dict[str, Syscall] = _load()


def render_markdown() -> str:
    """The human-readable syscall reference, generated from the table."""
    out = [
        "# llmos syscall reference (ABI v%d.%d)" % (ABI_VERSION, ABI_MINOR),
        "",
        "Generated from `specs/syscalls.toml` by `python -m llmos.specs render`; do not edit by hand.",
        "Frames, processes and streaming are described in [ABI.md](ABI.md).",
        "",
        "Every syscall can also answer: " + ", ".join(f"`{e}`" for e in COMMON_ERRORS) + ".",
        "",
        "| syscall | capability | streams | before hello |",
        "|---|---|---|---|",
    ]
    for s in SYSCALLS.values():
        out.append(f"| [`{s.name}`](#{s.name}) | {s.cap or '(none)'} | {'yes' if s.stream else ''} | "
                   f"{'yes' if s.before_hello else ''} |")
    for s in SYSCALLS.values():
        out += ["", f"## {s.name}", "", s.doc, "", f"- capability: `{s.cap}`" if s.cap else "- capability: none"]
        out.append(f"- result: `{s.result}`")
        if s.args:
            out += ["", "| argument | type | default | constraints | meaning |", "|---|---|---|---|---|"]
            for a in s.args.values():
                default = "required" if a.required else ("nil" if a.default is None else f"`{a.default!r}`")
                limits = []
                if a.min is not None:
                    limits.append(f">= {a.min}")
                if a.max is not None:
                    limits.append(f"<= {a.max}")
                if a.max_items is not None:
                    limits.append(f"items <= {a.max_items}")
                if a.max_len is not None:
                    limits.append(f"length <= {a.max_len}" + (" (each string)" if "list" in a.types else ""))
                if a.choices is not None:
                    limits.append("one of " + ", ".join(f"`{c!r}`" for c in a.choices))
                out.append(f"| `{a.name}` | {' or '.join(a.types).replace('null', 'nil')} | {default} | "
                           f"{', '.join(limits)} | {a.doc} |")
        else:
            out += ["", "No arguments."]
        if s.errors:
            out += ["", "Errors:", ""] + [f"- `{e}`: {why}" for e, why in s.errors.items()]
    return "\n".join(out) + "\n"
