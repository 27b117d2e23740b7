"""Every section and key of the kernel's config file, in one table: its type, default and meaning.

The loader (config.py) validates a file against KEYS before it reads a value, so a misspelt
section or key is a boot error naming it and the nearest known name ("unknown section [quota]:
did you mean [quotas]?") instead of a setting silently ignored, and a value of the wrong type is
one naming the key and the type it wants. The README's table of settings is rendered from KEYS
(`python -m llmos.kernel.configschema --markdown`) and tests/test_config.py holds the two equal.
A `*` in a key's path is a name the operator chooses: a device, a model.
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from llmos.specs.modelspec import DEFAULT_MODEL, QUANTS
from llmos.specs.units import exact_size, parse_duration, parse_size

from .auditsink import FACILITIES

DEFAULT_CAPS = ("ps", "devices", "models", "load", "infer", "embed", "mem", "alloc", "svc")
GRANTABLE_CAPS = DEFAULT_CAPS + ("admin", "tune")    # tune: fine-tune jobs (kernel/jobs.py)
MAX_REPLICAS = 64          # copies of one model, one per device
QUOTA_NAMES = ("processes", "requests", "tokens_per_minute", "reserve_bytes", "mem_bytes", "mem_keys")
DEFAULT_QUOTAS = {"processes": 64, "requests": 256, "tokens_per_minute": 60_000, "reserve_bytes": "25%",
                  "mem_bytes": 1 << 30, "mem_keys": 100_000}     # per user; kernel/quotas.py enforces them
DTYPES = ("auto", "float32", "bfloat16", "float16")
LOG_LEVELS = ("debug", "info", "warning", "error")
_SHARE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*")


def share_of(value: int | str | None) -> float | None:
    """The fraction of each device's memory a reserve_bytes quota such as "25%" gives; None for a size.
    ValueError for a string that is no percentage from 0 to 100."""
    if not isinstance(value, str):
        return None
    m = _SHARE.fullmatch(value)
    if m is None or float(m.group(1)) > 100:
        raise ValueError(f"'{value[:32]}' is neither a size nor a share of each device from 0% to 100% (e.g. 25%)")
    return float(m.group(1)) / 100


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the setting and its source."""


def _parses(parse: Callable[[Any], Any]) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        try:
            parse(value)
        except ValueError:
            return False
        return True
    return check


@dataclass(frozen=True)
class Type:
    """A kind of value, named as the docs and the errors say it."""
    name: str
    check: Callable[[Any], bool]


STRING = Type("a string", lambda v: isinstance(v, str))
BOOLEAN = Type("a boolean (true or false)", lambda v: isinstance(v, bool))
INTEGER = Type("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
NUMBER = Type("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
STRINGS = Type("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
SIZE = Type('a size ("8GiB", "512MiB", or bytes)', _parses(parse_size))
DURATION = Type('a duration ("30s", "5m", or seconds)', _parses(parse_duration))
SIZE_OR_SHARE = Type('a size ("8GiB") or a share of each device ("25%")',
                     lambda v: (isinstance(v, str) and v.strip().endswith("%")) or _parses(parse_size)(v))
ADDRESS = Type('a "HOST:PORT" string', STRING.check)
SYSLOG = Type("true, false, or a socket's absolute path", lambda v: isinstance(v, (bool, str)))


@dataclass(frozen=True)
class Key:
    path: str                 # dotted; "" parts none; "*" an operator's name
    type: Type
    default: str              # a TOML value, or (in parentheses) what happens when it is not set
    doc: str
    choices: tuple[str, ...] = ()
    required: bool = False


def _toml(values: Any) -> str:
    if isinstance(values, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in values) + "]"
    return f'"{values}"' if isinstance(values, str) else str(values).lower() if isinstance(values, bool) else str(values)


def _quota_keys(section: str, defaults: dict[str, Any] | None) -> list[Key]:
    docs = {"processes": "connected programs", "requests": "requests in flight across its programs",
            "tokens_per_minute": "tokens generated for it (a service's for its caller too); a generation ends at it",
            "reserve_bytes": "alloc_gpu and fine-tunes: a share of each device, or a size",
            "mem_bytes": "memory store bytes", "mem_keys": "memory store keys"}
    types = {"reserve_bytes": SIZE_OR_SHARE, "mem_bytes": SIZE}
    out = []
    for name in QUOTA_NAMES:
        value = defaults[name] if defaults else None
        if isinstance(value, int) and name.endswith("_bytes"):
            value = exact_size(value)
        shown = "(none)" if value is None else _toml(value)
        out.append(Key(f"{section}.{name}", types.get(name, INTEGER), shown, docs[name]))
    return out


KEYS: tuple[Key, ...] = (
    Key("socket", STRING, "(ipc://$XDG_RUNTIME_DIR/llmos/kernel.sock)", "the ZeroMQ URL to bind; tcp:// is CurveZMQ only"),
    Key("state_dir", STRING, "($XDG_STATE_HOME/llmos)", "memory store, principals and keys, audit and debug logs"),
    Key("devices", STRINGS, '["auto"]', "cpu, cuda:N, cpu:N, or auto (every CUDA device, else the CPU)"),
    Key("default_model", STRING, _toml(DEFAULT_MODEL), "loaded at boot; what infer uses without a model"),
    Key("preload", STRINGS, "(the default model)", "models loaded at boot"),
    Key("dtype", STRING, '"auto"', "weights and activations; auto: bf16 on CUDA and CPUs with native bf16", DTYPES),
    Key("log_level", STRING, '"info"', "the kernel's log", LOG_LEVELS),
    Key("device.*.memory", SIZE, "(measured)", 'the budget the kernel manages on this device (e.g. [device."cuda:0"])'),
    Key("device.*.kv_cache", SIZE, "(sized from the budget)", "KV-cache pool of each generative model on it"),
    Key("models.*.path", STRING, "(required)", "a transformers folder, or a folder holding gguf_file", required=True),
    Key("models.*.gguf_file", STRING, "(none)", "the GGUF file inside path"),
    Key("models.*.kind", STRING, "(from the folder)", "what the model does", ("generate", "embed")),
    Key("models.*.quant", STRING, '"none"', "weights quantized as the driver loads them", ("none",) + QUANTS),
    Key("replicas.*", INTEGER, "1", f"copies of model NAME at boot, one per device (1 to {MAX_REPLICAS})"),
    Key("limits.heartbeat_s", DURATION, "1.0", "how often drivers and the service host are pinged"),
    Key("limits.max_requests_per_process", INTEGER, "64", "requests of one process in flight (EAGAIN past it)"),
    Key("limits.max_running_per_process", INTEGER, "16", "requests of one process in a device's batch at once"),
    Key("limits.reserve_quota", SIZE, "(none)", "alloc_gpu per process, beyond the user's quota"),
    Key("limits.load_timeout_s", DURATION, "600.0", "a model load past it fails with ETIMEDOUT"),
    Key("limits.max_value", SIZE, '"16MiB"', "the largest memory value (at most the frame less 1 MiB)"),
    *_quota_keys("quotas", DEFAULT_QUOTAS),
    *_quota_keys("quotas.operator", None),
    Key("services.read_dirs", STRINGS, "[]", "absolute folders kb.ingest {path} may read"),
    Key("memory.encrypt", BOOLEAN, "false", "memory values AES-GCM encrypted at rest"),
    Key("metrics.listen", ADDRESS, "(not served)", "where /metrics and /health are served; keep it on loopback"),
    Key("ray.address", STRING, "(no Ray)", "a Ray cluster as ray.init takes it (auto, HOST:PORT, ray://HOST:PORT)"),
    Key("ray.listen", ADDRESS, "(this host, any port)", "the drivers' tcp socket; port 0: any"),
    Key("ray.num_gpus_per_driver", NUMBER, "1.0", "GPUs of a node per driver actor (above 0)"),
    Key("ray.num_cpus_per_driver", NUMBER, "1.0", "CPUs of a node without GPUs for its one driver (above 0)"),
    Key("audit.syslog", SYSLOG, "false", "each audit line also to syslog: true is /dev/log"),
    Key("audit.facility", STRING, '"authpriv"', "the syslog facility", tuple(sorted(FACILITIES))),
    Key("caps.default", STRINGS, _toml(DEFAULT_CAPS), "the caps a program gets when it asks for none"),
    Key("caps.grantable", STRINGS, _toml(GRANTABLE_CAPS), "the caps any program may hold"),
)
_BY_PATH = {tuple(k.path.split(".")): k for k in KEYS}


def _children(prefix: tuple[str, ...]) -> list[str]:
    return sorted({p[len(prefix)] for p in _BY_PATH if len(p) > len(prefix) and p[:len(prefix)] == prefix})


def _section(shown: tuple[str, ...]) -> str:
    return "[" + ".".join(p if p.replace("_", "").replace("-", "").isalnum() else f'"{p}"' for p in shown) + "]"


def _named(shown: tuple[str, ...], name: str) -> str:
    return f"{_section(shown)} {name}" if shown else name


def _kind_of(value: Any) -> str:
    for kind, what in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                       (list, "a list"), (dict, "a table")):
        if isinstance(value, kind):
            shown = f'"{value[:40]}"' if isinstance(value, str) else str(value).lower() if kind is bool else value
            return f"{what} ({shown})" if kind in (bool, int, float, str) else what
    return type(value).__name__


def validate(data: dict[str, Any], prefix: tuple[str, ...] = (), shown: tuple[str, ...] = ()) -> None:
    """ConfigError for the first section or key KEYS does not know, or value of the wrong type."""
    options = _children(prefix)
    for name, value in data.items():
        part = name if name in options else "*" if "*" in options else None
        if part is None:
            _unknown(name, value, options, prefix, shown)
        path = prefix + (part,)
        key = _BY_PATH.get(path)
        if key is None:
            if not isinstance(value, dict):
                raise ConfigError(f"{_section(shown + (name,))} must be a table, not {_kind_of(value)}")
            validate(value, path, shown + (name,))
        elif not key.type.check(value):
            raise ConfigError(f"{_named(shown, name)} must be {key.type.name}, not {_kind_of(value)}")
        elif key.choices and value not in key.choices:
            raise ConfigError(f"{_named(shown, name)} must be one of {', '.join(key.choices)}, not '{str(value)[:40]}'")
    for part in options:
        key = _BY_PATH.get(prefix + (part,))
        if key is not None and key.required and part not in data:
            raise ConfigError(f"{_section(shown)} needs {part}")


def _unknown(name: str, value: Any, options: list[str], prefix: tuple[str, ...], shown: tuple[str, ...]) -> None:
    is_section = isinstance(value, dict)     # suggest a section for a table, a key for a value
    known = [o for o in options if o != "*" and ((prefix + (o,)) not in _BY_PATH) == is_section]
    near = difflib.get_close_matches(name, known, n=1)
    if is_section:
        what = f"unknown section {_section(shown + (name,))}"
        hint = f"did you mean {_section(shown + (near[0],))}?" if near else f"known: {', '.join(known)}"
    else:
        what = f"unknown key {_named(shown, name)}"
        hint = f"did you mean {near[0]}?" if near else f"known: {', '.join(known)}"
    raise ConfigError(f"{what}: {hint}")


def markdown() -> str:
    """The README's table of settings."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key in KEYS:
        section, _, name = key.path.rpartition(".")
        name = "NAME" if name == "*" else name
        where = f"`{_section(tuple(p.replace('*', 'NAME') for p in section.split('.')))} {name}`" if section else f"`{name}`"
        default = key.default if key.default.startswith("(") else f"`{key.default}`"
        kind = key.type.name + (f": {', '.join(key.choices)}" if key.choices and len(key.choices) < 8 else "")
        rows.append(f"| {where} | {kind} | {default} | {key.doc} |")
    return "\n".join(rows) + "\n"


def literal_defaults() -> dict[str, Any]:
    """The keys whose default is a TOML value, as a config file that sets each to it."""
    return {k.path: tomllib.loads(f"v = {k.default}")["v"] for k in KEYS if not k.default.startswith("(")
            and "*" not in k.path}


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m llmos.kernel.configschema --markdown")
    sys.stdout.write(markdown())
