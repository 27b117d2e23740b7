"""Finding plugins, calling their registration hooks, and the table of services they build.

Runs once, at start-up (pluggy belongs there, not on the hot path): in the service host, which
builds its table of services, and in the `llmos` command, which adds plugins' subcommands.
Built-ins register through the same hooks as third-party plugins. A plugin that fails to import,
to validate, or to register is recorded in `Catalog.failed` with its error and skipped.

Which plugins load, from the environment the kernel gives the host:
    LLMOS_PLUGINS          comma-separated entry-point names allowed (unset: all installed; "": none)
    LLMOS_PLUGINS_DENY     comma-separated plugin or service names never loaded (built-ins too)
    LLMOS_PLUGIN_MODULES   extra modules to load as plugins by import path (development, tests)
    LLMOS_SERVICES_PATH    directories put first on sys.path before looking (os.pathsep-separated)
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import sys
from dataclasses import dataclass, field

import pluggy

from llmos.specs.abi import SchemaError, Syscall, compile_args

from . import hookspecs
from .hookspecs import ENTRY_POINT_GROUP, PROJECT, Task

BUILTINS = ("summarize", "classify", "translate", "redact", "moderate", "kb", "support", "voice")
BUILTIN_PREFIX = "builtin."     # their plugin names; their tasks' args must be bounded as the table's are
_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,63}$")
MAX_COST_LIMIT_S = 3600       # a task's cost_limit_s: the longest any one call may run


class RegistrationError(ValueError):
    """A plugin registered something malformed; the message says what and how to fix it."""


@dataclass
class TaskEntry:
    """A registered task with its args compiled by the syscall table's compiler: `schema.validate`
    checks a call's args and fills defaults, or raises ArgError naming the argument."""

    service: str
    name: str
    task: Task
    schema: Syscall

    def describe(self) -> dict:
        args = {}
        for a in self.schema.args.values():
            spec = {"type": "|".join(a.types), "required": a.required, "doc": a.doc}
            if not a.required:
                spec["default"] = a.default
            for key in ("min", "max", "max_len", "max_items"):
                if getattr(a, key) is not None:
                    spec[key] = getattr(a, key)
            if a.choices is not None:
                spec["choices"] = list(a.choices)
            args[a.name] = spec
        return {"name": self.name, "description": self.task.description, "stream": self.task.stream, "args": args,
                "cost_limit_s": self.task.cost_limit_s}


@dataclass
class ServiceEntry:
    name: str
    plugin: str
    description: str
    tasks: dict[str, TaskEntry]

    def describe(self) -> dict:
        return {"name": self.name, "plugin": self.plugin, "description": self.description,
                "tasks": [t.describe() for t in self.tasks.values()]}


@dataclass
class Catalog:
    services: dict[str, ServiceEntry] = field(default_factory=dict)
    failed: list[dict] = field(default_factory=list)        # [{plugin, error}]

    def describe(self) -> dict:
        return {"services": [s.describe() for s in self.services.values()], "failed": list(self.failed)}


def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def compile_task(service: str, name: str, task: Task, bounded: bool = False) -> TaskEntry:
    """Compile a Task's args into a validator; RegistrationError if the task or its schema is malformed,
    or (bounded: the built-ins, held to the syscall table's rule) leaves an argument unbounded."""
    if not isinstance(task, Task):
        raise RegistrationError(f"service '{service}': task '{name}' must be a llmos.services.Task, "
                                f"got {type(task).__name__}")
    if not callable(task.fn):
        raise RegistrationError(f"service '{service}': task '{name}' has no callable fn")
    limit = task.cost_limit_s
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 < limit <= MAX_COST_LIMIT_S:
        raise RegistrationError(f"service '{service}': task '{name}': cost_limit_s must be seconds in (0, "
                                f"{MAX_COST_LIMIT_S}], got {limit!r}")
    try:
        args = compile_args(f"service '{service}' task '{name}'", task.args or {}, bounded=bounded)
    except SchemaError as exc:
        raise RegistrationError(str(exc)) from None
    return TaskEntry(service, name, task, Syscall(f"{service}.{name}", "", task.description, "", {}, task.stream, args))


def build_catalog(pm: pluggy.PluginManager, failed: list[dict] | None = None) -> Catalog:
    """Call every plugin's register_services with a register() that records who owns what.

    Each plugin's hook is called on its own, so one that raises loses only its own services;
    the first plugin to register a name keeps it (built-ins are registered first).
    """
    catalog = Catalog(failed=list(failed or []))
    for impl in pm.hook.register_services.get_hookimpls():   # in registration order: built-ins first
        plugin = pm.get_name(impl.plugin) or repr(impl.plugin)
        mine: dict[str, ServiceEntry] = {}

        def register(name: str, tasks: dict[str, Task], description: str = "", _plugin=plugin, _mine=mine) -> None:
            if not isinstance(name, str) or not _NAME.match(name):
                raise RegistrationError(f"service name {name!r} must match {_NAME.pattern}")
            if name in catalog.services or name in _mine:
                owner = catalog.services[name].plugin if name in catalog.services else _plugin
                raise RegistrationError(f"service '{name}' is already registered by plugin '{owner}'")
            if not isinstance(tasks, dict) or not tasks:
                raise RegistrationError(f"service '{name}': tasks must be a non-empty map of name -> Task")
            compiled = {}
            for task_name, task in tasks.items():
                if not isinstance(task_name, str) or not _NAME.match(task_name):
                    raise RegistrationError(f"service '{name}': task name {task_name!r} must match {_NAME.pattern}")
                compiled[task_name] = compile_task(name, task_name, task, bounded=_plugin.startswith(BUILTIN_PREFIX))
            _mine[name] = ServiceEntry(name, _plugin, description or "", compiled)

        try:
            impl.function(**{arg: register for arg in impl.argnames})
        except Exception as exc:
            catalog.failed.append({"plugin": plugin, "error": f"{exc.__class__.__name__}: {exc}"})
            continue
        catalog.services.update(mine)
    return catalog


def _names(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


def discover(env: dict[str, str] | None = None) -> tuple[pluggy.PluginManager, list[dict]]:
    """A plugin manager holding every plugin the environment allows (built-ins first), and the
    plugins that failed to import or validate: the service host builds its services from it, the
    `llmos` command its plugin subcommands. Never raises for a bad plugin."""
    env = dict(os.environ if env is None else env)
    for path in reversed([p for p in env.get("LLMOS_SERVICES_PATH", "").split(os.pathsep) if p]):
        if path not in sys.path:
            sys.path.insert(0, path)
    importlib.invalidate_caches()
    allow = _names(env.get("LLMOS_PLUGINS"))
    deny = _names(env.get("LLMOS_PLUGINS_DENY")) or set()
    pm = plugin_manager()
    failed: list[dict] = []

    def add(name: str, importer) -> None:
        try:
            module = importer()
            pm.register(module, name=name)
            pm.check_pending()
        except Exception as exc:
            try:
                if pm.get_plugin(name) is not None:
                    pm.unregister(name=name)
            except Exception:
                pass
            failed.append({"plugin": name, "error": f"{exc.__class__.__name__}: {exc}"})

    for name in BUILTINS:
        if name not in deny:
            add(f"{BUILTIN_PREFIX}{name}", lambda name=name: importlib.import_module(f"llmos.services.builtin.{name}"))
    seen = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in seen or ep.name in deny or (allow is not None and ep.name not in allow):
            continue
        seen.add(ep.name)
        add(ep.name, ep.load)
    for module in sorted(_names(env.get("LLMOS_PLUGIN_MODULES")) or ()):
        if module not in deny:
            add(module, lambda module=module: importlib.import_module(module))
    return pm, failed


def load(env: dict[str, str] | None = None) -> Catalog:
    """The services of every plugin the environment allows, less the denied service names."""
    env = dict(os.environ if env is None else env)
    catalog = build_catalog(*discover(env))
    for name in _names(env.get("LLMOS_PLUGINS_DENY")) or ():
        catalog.services.pop(name, None)
    return catalog
