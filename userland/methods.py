"""Client methods derived from the syscall table (specs/syscalls.toml), not copied from it.

Each syscall becomes a method whose parameters, defaults and docstring are the table's, so
`help(Client.infer)` reads like the reference and an argument added to the table reaches the
client with nothing to edit here. The few things that are the client's choice, not the ABI's,
are the constants below.
"""

from __future__ import annotations

import functools
import inspect
import operator
from typing import Any

from llmos.specs import SYSCALLS, Syscall

CONNECTION_CALLS = frozenset({"hello", "exit"})    # made by connect() and close(), not methods of their own
STREAM_NAMES = {"infer": "stream", "svc_call": "svc_stream"}    # the stream=true twin of a streaming syscall
UNWRAPPED = {"ps": "processes", "devices": "devices"}           # returned as the one field their result has

# Calls that may wait on a model (a load, a generation, an embedding) or on the service host take
# as long as they take: the client gives them no timeout. memwrite waits on a model only with embed=true.
WAITS_ON_MODEL = frozenset({"load_model", "infer", "embed", "score", "memsearch", "svc_call", "svc_reload"})
WAITS_ON_MODEL_WHEN = {"memwrite": "embed"}

_PY_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "bytes": bytes, "list": list, "map": dict,
             "null": type(None)}
_POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD


def _annotation(types: tuple[str, ...]) -> Any:
    if "any" in types:
        return Any
    return functools.reduce(operator.or_, (_PY_TYPES[t] for t in types))


class SyscallMethod:
    """One syscall as a client method: the table's arguments (but `stream`) in the table's order."""

    def __init__(self, syscall: Syscall, name: str, stream: bool = False):
        self.syscall = syscall
        self.name = name
        self.stream = stream
        args = [a for a in syscall.args.values() if a.name != "stream"]
        self.params = tuple(a.name for a in args)
        self.param_names = frozenset(self.params)
        self.required = frozenset(a.name for a in args if a.required)
        self.waits_on_model = syscall.name in WAITS_ON_MODEL
        self.waits_on_model_when = WAITS_ON_MODEL_WHEN.get(syscall.name)
        self.unwrap = UNWRAPPED.get(syscall.name)
        # Signature() refuses a required argument after an optional one: the table must list them first.
        self.signature = inspect.Signature(
            [inspect.Parameter("self", _POSITIONAL)]
            + [inspect.Parameter(a.name, _POSITIONAL, annotation=_annotation(a.types),
                                 default=inspect.Parameter.empty if a.required else a.default) for a in args])
        self.doc = _docstring(syscall, stream)

    def bind(self, args: tuple, kwargs: dict) -> dict:
        """The arguments of one call by name, only those given: the kernel fills in the table's defaults."""
        bound = kwargs       # a dict of the call's own, made by **kwargs
        if args:
            if len(args) > len(self.params):
                raise TypeError(f"{self.name}() takes {len(self.params)} arguments but {len(args)} were given")
            bound = dict(zip(self.params, args))
            twice = bound.keys() & kwargs.keys()
            if twice:
                raise TypeError(f"{self.name}() got multiple values for argument '{min(twice)}'")
            bound.update(kwargs)
        if not bound.keys() <= self.param_names:
            unknown = min(bound.keys() - self.param_names)
            raise TypeError(f"{self.name}() got an unexpected keyword argument '{unknown}'; "
                            f"it takes {', '.join(self.params) or 'none'}")
        if not self.required <= bound.keys():
            missing = ", ".join(sorted(self.required - bound.keys()))
            raise TypeError(f"{self.name}() missing required argument(s): {missing}")
        return bound

    def timeout(self, bound: dict, default: float | None) -> float | None:
        """How long to wait for the reply: forever for a call that may wait on a model."""
        if self.waits_on_model or (self.waits_on_model_when and bound.get(self.waits_on_model_when)):
            return None
        return default


def _docstring(syscall: Syscall, stream: bool) -> str:
    lines = [syscall.doc]
    if stream:
        lines += ["", f"`{syscall.name}` with stream=true: returns a Stream to iterate for text deltas; "
                      "its `.result` holds the final result after."]
    documented = [a for a in syscall.args.values() if a.doc and a.name != "stream"]
    if documented:
        lines += ["", "Arguments:"] + [f"    {a.name}: {a.doc}" for a in documented]
    if syscall.errors:
        lines += ["", "Raises LLMOSError with errno:"] + [f"    {e}: {why}" for e, why in syscall.errors.items()]
    return "\n".join(lines)


def _methods() -> list[SyscallMethod]:
    methods = []
    for syscall in SYSCALLS.values():
        if syscall.name in CONNECTION_CALLS:
            continue
        methods.append(SyscallMethod(syscall, syscall.name))
        if syscall.stream:
            methods.append(SyscallMethod(syscall, STREAM_NAMES.get(syscall.name, f"{syscall.name}_stream"), True))
    return methods


METHODS: list[SyscallMethod] = _methods()
