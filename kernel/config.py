"""Kernel settings: command-line flags over environment variables over a TOML file over defaults.

The TOML file (`--config`, $LLMOS_CONFIG, or ~/.config/llmos/config.toml) is where an operator
lists models, devices and defaults; see README.md for an example.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from llmos.specs.registry import DEFAULT_MODEL
from llmos.specs.protocol import MAX_FRAME_BYTES, default_socket, runtime_dir

MAX_VALUE_CEILING = MAX_FRAME_BYTES - (1 << 20)    # room for the reply's envelope
DEFAULT_CAPS = ("ps", "devices", "models", "load", "infer", "embed", "mem", "alloc", "svc")
GRANTABLE_CAPS = DEFAULT_CAPS + ("admin", "tune")    # tune: fine-tune jobs (kernel/jobs.py)
MAX_REPLICAS = 64          # copies of one model, one per device
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6, "mib": 1 << 20,
          "g": 1 << 30, "gb": 10**9, "gib": 1 << 30, "t": 1 << 40, "tb": 10**12, "tib": 1 << 40}


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the setting and its source."""


def split_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT') -> (host, port); ConfigError saying what to write."""
    host, sep, port = str(value).rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"metrics address '{value}' is not HOST:PORT (e.g. 127.0.0.1:9464)")
    return host, int(port)


def parse_bytes(value: Any, what: str = "size") -> int:
    """'8GiB', '512 MB', 1048576 -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"{what}: cannot read '{value}' as a size (write e.g. 512MiB or 8GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass
class RaySettings:
    """[ray] and --ray: driver actors on a Ray cluster besides the local drivers (kernel/raydrivers.py)."""
    address: str | None = None              # the cluster (as ray.init takes it); None: no Ray
    listen: str | None = None               # HOST:PORT of the drivers' tcp socket; default: this host, any port
    num_gpus_per_driver: float = 1.0        # one driver per GPU of a node
    num_cpus_per_driver: float = 1.0        # a node without GPUs gets one CPU driver this big


RAY_KEYS = ("address", "listen", "num_gpus_per_driver", "num_cpus_per_driver")


@dataclass
class Settings:
    socket: str = field(default_factory=default_socket)
    devices: list[str] = field(default_factory=lambda: ["auto"])
    default_model: str | None = DEFAULT_MODEL
    preload: list[str] | None = None          # None: just the default model
    state_dir: Path = field(default_factory=lambda: Path(
        os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "llmos")
    models: dict[str, dict] = field(default_factory=dict)
    device_memory: dict[str, int] = field(default_factory=dict)   # budget per device; default: measured
    kv_cache_bytes: dict[str, int] = field(default_factory=dict)  # per generate model on a device
    heartbeat_s: float = 1.0
    max_requests_per_process: int = 64
    max_running_per_process: int = 16       # requests of one process in a device's batch at once
    reserve_quota_bytes: int | None = None  # per process; None: no quota beyond the device
    max_value_bytes: int = 16 << 20
    quotas: dict[str, int | str] = field(default_factory=dict)          # [quotas]: over the defaults of quotas.py
    operator_quotas: dict[str, int | str] = field(default_factory=dict) # [quotas.operator]: none unless given
    default_caps: tuple[str, ...] = DEFAULT_CAPS
    grantable_caps: tuple[str, ...] = GRANTABLE_CAPS
    service_read_dirs: list[str] = field(default_factory=list)  # [services] read_dirs: where kb.ingest may read
    load_timeout_s: float = 600.0           # [limits] load_timeout_s: a model load past it fails with ETIMEDOUT
    memory_encrypt: bool = False            # [memory] encrypt: memory values AES-GCM encrypted at rest
    audit_syslog: str | None = None         # [audit] syslog: each audit line also to this syslog socket
    audit_syslog_facility: str = "authpriv" # [audit] facility
    log_level: str = "info"
    dtype: str = "auto"                     # weights and activations: auto, float32, bfloat16, float16
    metrics_listen: str | None = None       # [metrics] listen / --metrics: HOST:PORT of /metrics and /health
    replicas: dict[str, int] = field(default_factory=dict)   # [replicas] NAME = N / --replicas: copies at boot
    ray: RaySettings = field(default_factory=RaySettings)
    config_file: Path | None = None

    @property
    def operator_socket(self) -> str:
        """Where the operator (and the service host) connect: the socket itself if it is ipc, else
        the usual private ipc socket, so on the kernel's machine `llmos ...` finds a tcp kernel's
        console with no flags (boot locks it as it locks the tcp socket)."""
        if not self.socket.startswith("tcp://"):
            return self.socket
        return f"ipc://{runtime_dir()}/kernel.sock"

    def models_to_load(self) -> list[str]:
        if self.preload is not None:
            return list(self.preload)
        return [self.default_model] if self.default_model else []


def load(flags: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Settings:
    """Build Settings from flags (None = not given), environment and the config file."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = dict(os.environ if env is None else env)
    s = Settings()
    path = flags.get("config") or env.get("LLMOS_CONFIG")
    default_path = Path.home() / ".config" / "llmos" / "config.toml"
    if path or default_path.exists():
        s.config_file = Path(path or default_path)
        _apply_file(s, s.config_file)
    _apply_env(s, env)
    _apply_flags(s, flags)
    s.state_dir = Path(s.state_dir).expanduser()
    return s


def _apply_file(s: Settings, path: Path) -> None:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    for key in ("socket", "default_model", "log_level", "dtype"):
        if key in data:
            setattr(s, key, data[key])
    if "state_dir" in data:
        s.state_dir = Path(data["state_dir"])
    if "devices" in data:
        s.devices = list(data["devices"])
    if "preload" in data:
        s.preload = list(data["preload"])
    for name, entry in data.get("models", {}).items():
        if "path" not in entry:
            raise ConfigError(f"config file {path}: [models.{name}] needs a path")
        s.models[name] = dict(entry)
    for name, n in data.get("replicas", {}).items():
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_REPLICAS:
            raise ConfigError(f"config file {path}: [replicas] {name} must be a whole number from 1 to {MAX_REPLICAS}")
        s.replicas[name] = n
    for dev, entry in data.get("device", {}).items():
        if "memory" in entry:
            s.device_memory[dev] = parse_bytes(entry["memory"], f"[device.\"{dev}\"] memory")
        if "kv_cache" in entry:
            s.kv_cache_bytes[dev] = parse_bytes(entry["kv_cache"], f"[device.\"{dev}\"] kv_cache")
    limits = data.get("limits", {})
    for key in ("heartbeat_s", "max_requests_per_process", "max_running_per_process"):
        if key in limits:
            setattr(s, key, limits[key])
    if "reserve_quota" in limits:
        s.reserve_quota_bytes = parse_bytes(limits["reserve_quota"], "[limits] reserve_quota")
    if "load_timeout_s" in limits:
        s.load_timeout_s = float(limits["load_timeout_s"])
    if "max_value" in limits:
        s.max_value_bytes = parse_bytes(limits["max_value"], "[limits] max_value")
        if s.max_value_bytes > MAX_VALUE_CEILING:     # a reply carrying it must still fit in a frame
            raise ConfigError(f"config file {path}: [limits] max_value may be at most "
                              f"{MAX_VALUE_CEILING >> 20} MiB (a frame is at most {MAX_FRAME_BYTES >> 20} MiB)")
    for key, value in data.get("quotas", {}).items():
        if key == "operator" and isinstance(value, dict):
            s.operator_quotas = {k: _quota(path, f"operator.{k}", v) for k, v in value.items()}
        else:
            s.quotas[key] = _quota(path, key, value)
    read_dirs = data.get("services", {}).get("read_dirs", [])
    if not isinstance(read_dirs, list) or not all(isinstance(d, str) and os.path.isabs(os.path.expanduser(d))
                                                  for d in read_dirs):
        raise ConfigError(f"config file {path}: [services] read_dirs must be a list of absolute folder paths")
    s.service_read_dirs = [os.path.expanduser(d) for d in read_dirs]
    encrypt = data.get("memory", {}).get("encrypt", False)
    if not isinstance(encrypt, bool):
        raise ConfigError(f"config file {path}: [memory] encrypt must be true or false")
    s.memory_encrypt = encrypt
    listen = data.get("metrics", {}).get("listen")
    if listen is not None:
        split_listen(listen)
        s.metrics_listen = listen
    if "ray" in data:
        s.ray = _ray_section(path, data["ray"])
    if "audit" in data:
        s.audit_syslog, s.audit_syslog_facility = _audit_section(path, data["audit"])
    caps = data.get("caps", {})
    if "default" in caps:
        s.default_caps = tuple(caps["default"])
    if "grantable" in caps:
        s.grantable_caps = tuple(caps["grantable"])


def _ray_section(path: Path, table: Any) -> RaySettings:
    where = f"config file {path}: [ray]"
    if not isinstance(table, dict) or set(table) - set(RAY_KEYS):
        raise ConfigError(f"{where} takes only {', '.join(RAY_KEYS)}")
    ray = RaySettings(**table)
    if ray.address is not None and not isinstance(ray.address, str):
        raise ConfigError(f"{where} address must be a string, e.g. \"ray://head:10001\" or \"auto\"")
    for key in ("num_gpus_per_driver", "num_cpus_per_driver"):
        value = getattr(ray, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{where} {key} must be a number above 0")
    if ray.listen is not None:
        try:
            split_listen(ray.listen)
        except ConfigError:
            raise ConfigError(f"{where} listen '{ray.listen}' is not HOST:PORT (port 0: any)") from None
    return ray


def _audit_section(path: Path, table: Any) -> tuple[str | None, str]:
    """[audit] syslog = true (/dev/log), false, or a unix socket's absolute path; facility = a syslog name."""
    from .auditsink import DEFAULT_FACILITY, DEFAULT_SYSLOG, FACILITIES

    where = f"config file {path}: [audit]"
    if not isinstance(table, dict) or set(table) - {"syslog", "facility"}:
        raise ConfigError(f"{where} takes only syslog and facility")
    syslog = table.get("syslog", False)
    if syslog is True:
        syslog = DEFAULT_SYSLOG
    elif syslog is False:
        syslog = None
    elif not isinstance(syslog, str) or not os.path.isabs(syslog):
        raise ConfigError(f"{where} syslog must be true, false or the absolute path of a syslog socket")
    facility = table.get("facility", DEFAULT_FACILITY)
    if not isinstance(facility, str) or facility not in FACILITIES:
        raise ConfigError(f"{where} facility must be one of {', '.join(sorted(FACILITIES))}")
    return syslog, facility


def _quota(path: Path, key: str, value: Any) -> int | str:
    """A quota's value: a count, a size for *_bytes, or for reserve_bytes a share of each device ("25%")."""
    from .quotas import QUOTA_NAMES, share_of

    if key.split(".")[-1] not in QUOTA_NAMES:
        raise ConfigError(f"config file {path}: unknown quota '{key}'; known: {', '.join(QUOTA_NAMES)}")
    if key.endswith("reserve_bytes") and isinstance(value, str) and "%" in value:
        try:
            share_of(value)
        except ValueError as exc:
            raise ConfigError(f"config file {path}: [quotas] {key}: {exc}") from None
        return value.strip()
    return parse_bytes(value, f"[quotas] {key}") if key.endswith("bytes") else int(value)


def _apply_env(s: Settings, env: dict[str, str]) -> None:
    if env.get("LLMOS_SOCKET"):
        s.socket = env["LLMOS_SOCKET"]
    if env.get("LLMOS_DEVICE"):
        s.devices = [d.strip() for d in env["LLMOS_DEVICE"].split(",") if d.strip()]
    if env.get("LLMOS_MODEL"):
        s.default_model = None if env["LLMOS_MODEL"] == "none" else env["LLMOS_MODEL"]
    if env.get("LLMOS_STATE_DIR"):
        s.state_dir = Path(env["LLMOS_STATE_DIR"])
    if env.get("LLMOS_DTYPE"):
        s.dtype = env["LLMOS_DTYPE"]
    if env.get("LLMOS_LOG_LEVEL"):
        s.log_level = env["LLMOS_LOG_LEVEL"]
    if env.get("LLMOS_KV_CACHE"):
        s.kv_cache_bytes["*"] = parse_bytes(env["LLMOS_KV_CACHE"], "LLMOS_KV_CACHE")


def _apply_flags(s: Settings, flags: dict[str, Any]) -> None:
    if "socket" in flags:
        s.socket = flags["socket"]
    if "device" in flags:
        s.devices = [d.strip() for d in flags["device"].split(",") if d.strip()]
    if flags.get("no_model"):
        s.default_model = None
        s.preload = []
    elif "model" in flags:
        s.default_model = flags["model"]
        s.preload = None
    if "replicas" in flags and s.default_model:
        if not 1 <= flags["replicas"] <= MAX_REPLICAS:
            raise ConfigError(f"--replicas must be from 1 to {MAX_REPLICAS}")
        s.replicas[s.default_model] = flags["replicas"]
    if "state_dir" in flags:
        s.state_dir = Path(flags["state_dir"])
    if "dtype" in flags:
        s.dtype = flags["dtype"]
    if "log_level" in flags:
        s.log_level = flags["log_level"]
    if "kv_cache" in flags:
        s.kv_cache_bytes["*"] = parse_bytes(flags["kv_cache"], "--kv-cache")
    if "metrics" in flags:
        split_listen(flags["metrics"])
        s.metrics_listen = flags["metrics"]
    if "ray" in flags:
        s.ray.address = flags["ray"]
