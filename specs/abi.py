"""The syscall table (syscalls.toml) as Python: argument validation and the rendered reference.

The kernel validates with `validate`, the client library builds its methods from `SYSCALLS`,
and `render_markdown` writes specs/syscalls.md, so the three read one source and cannot drift.
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

from .protocol import ABI_VERSION, ERRNOS

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
_REQUIRED = object()


class ArgError(ValueError):
    """Arguments that do not match the syscall's declaration (answered with EINVAL)."""


@dataclass(frozen=True)
class Arg:
    name: str
    types: tuple[str, ...]
    default: Any = _REQUIRED
    doc: str = ""
    min: float | None = None
    max: float | None = None
    max_len: int | None = None

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def check(self, syscall: str, value: Any) -> Any:
        if value is None:
            if "null" in self.types:
                return None
            raise ArgError(f"{syscall}: argument '{self.name}' must not be nil")
        if not any(_is_type(value, t) for t in self.types if t != "null"):
            wanted = " or ".join(t for t in self.types if t != "null")
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
        if isinstance(value, tuple):
            value = list(value)
        return value


def _is_type(value: Any, name: str) -> bool:
    if name == "any":
        return True
    if name in ("int", "float") and isinstance(value, bool):
        return False  # msgpack keeps bools apart from ints; so do we
    return isinstance(value, _PY_TYPES[name])


@dataclass(frozen=True)
class Syscall:
    name: str
    cap: str
    doc: str
    result: str
    errors: dict[str, str]
    stream: bool
    args: dict[str, Arg] = field(default_factory=dict)

    def validate(self, args: Any) -> dict[str, Any]:
        """Check `args` against the declaration; return them with defaults filled in."""
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ArgError(f"{self.name}: 'args' must be a map, got {type(args).__name__}")
        unknown = sorted(set(args) - set(self.args))
        if unknown:
            raise ArgError(f"{self.name}: unknown argument(s) {', '.join(map(str, unknown))}; "
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
    calls = {}
    for name, spec in table["syscalls"].items():
        args = {}
        for arg_name, a in spec.get("args", {}).items():
            types = tuple(a["type"].split("|"))
            default = None if a.get("nullable") else a.get("default", _REQUIRED)
            if a.get("nullable") and "null" not in types:
                types += ("null",)
            args[arg_name] = Arg(arg_name, types, default, a.get("doc", ""), a.get("min"), a.get("max"), a.get("max_len"))
        for errno in spec["errors"]:
            if errno not in ERRNOS:
                raise RuntimeError(f"syscalls.toml: {name} lists unknown errno {errno}")
        calls[name] = Syscall(name, spec["cap"], spec["doc"], spec["result"], dict(spec["errors"]),
                              bool(spec.get("stream", False)), args)
    return calls


SYSCALLS: dict[str, Syscall] = _load()


def render_markdown() -> str:
    """The human-readable syscall reference, generated from the table."""
    out = [
        "# llmos syscall reference (ABI v%d)" % ABI_VERSION,
        "",
        "Generated from `specs/syscalls.toml` by `python -m llmos.specs render`; do not edit by hand.",
        "Frames, processes and streaming are described in [ABI.md](ABI.md).",
        "",
        "Every syscall can also answer: " + ", ".join(f"`{e}`" for e in COMMON_ERRORS) + ".",
        "",
        "| syscall | capability | streams |",
        "|---|---|---|",
    ]
    for s in SYSCALLS.values():
        out.append(f"| [`{s.name}`](#{s.name}) | {s.cap or '(none)'} | {'yes' if s.stream else ''} |")
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
                if a.max_len is not None:
                    limits.append(f"length <= {a.max_len}")
                out.append(f"| `{a.name}` | {' or '.join(a.types).replace('null', 'nil')} | {default} | "
                           f"{', '.join(limits)} | {a.doc} |")
        else:
            out += ["", "No arguments."]
        if s.errors:
            out += ["", "Errors:", ""] + [f"- `{e}`: {why}" for e, why in s.errors.items()]
    return "\n".join(out) + "\n"
