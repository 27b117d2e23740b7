"""Kernel settings: command-line flags over environment variables over a TOML file over defaults.

The TOML file (`--config`, $LLMOS_CONFIG, or ~/.config/llmos/config.toml) is where an operator
lists models, devices and defaults; see README.md for an example. Every key it may hold, with its
type, is in configschema.KEYS, which checks a file before any value of it is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from llmos.specs.modelspec import DEFAULT_MODEL
from llmos.specs.protocol import MAX_FRAME_BYTES, default_socket, runtime_dir
from llmos.specs.units import format_size, parse_duration, parse_size

from .configschema import DEFAULT_CAPS, GRANTABLE_CAPS, MAX_REPLICAS, ConfigError, share_of, validate

MAX_VALUE_CEILING = MAX_FRAME_BYTES - (1 << 20)    # room for the reply's envelope
__all__ = ["ConfigError", "DEFAULT_CAPS", "GRANTABLE_CAPS", "MAX_REPLICAS", "RaySettings", "Settings", "load",
           "parse_bytes", "split_listen"]


def split_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT') -> (host, port); ConfigError saying what to write."""
    host, sep, port = str(value).rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"metrics address '{value}' is not HOST:PORT (e.g. 127.0.0.1:9464)")
    return host, int(port)


def parse_bytes(value: Any, what: str = "size") -> int:
    """'8GiB', '512 MB', 1048576 -> bytes (units.parse_size); ConfigError naming `what`."""
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


@dataclass
class RaySettings:
    """[ray] and --ray: driver actors on a Ray cluster besides the local drivers (kernel/raydrivers.py)."""
    address: str | None = None              # the cluster (as ray.init takes it); None: no Ray
    listen: str | None = None               # HOST:PORT of the drivers' tcp socket; default: this host, any port
    num_gpus_per_driver: float = 1.0        # one driver per GPU of a node
    num_cpus_per_driver: float = 1.0        # a node without GPUs gets one CPU driver this big


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
    try:
        validate(data)
        _read_file(s, data)
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def _read_file(s: Settings, data: dict[str, Any]) -> None:
    """Settings from a file that configschema.validate passed: every type is right, ranges are checked here."""
    for key in ("socket", "default_model", "log_level", "dtype"):
        if key in data:
            setattr(s, key, data[key])
    if "state_dir" in data:
        s.state_dir = Path(data["state_dir"])
    if "devices" in data:
        s.devices = list(data["devices"])
    if "preload" in data:
        s.preload = list(data["preload"])
    s.models.update((name, dict(entry)) for name, entry in data.get("models", {}).items())
    for name, n in data.get("replicas", {}).items():
        if not 1 <= n <= MAX_REPLICAS:
            raise ConfigError(f"[replicas] {name} must be a whole number from 1 to {MAX_REPLICAS}")
        s.replicas[name] = n
    for dev, entry in data.get("device", {}).items():
        if "memory" in entry:
            s.device_memory[dev] = parse_size(entry["memory"])
        if "kv_cache" in entry:
            s.kv_cache_bytes[dev] = parse_size(entry["kv_cache"])
    limits = data.get("limits", {})
    for key in ("max_requests_per_process", "max_running_per_process"):
        if key in limits:
            setattr(s, key, limits[key])
    for key in ("heartbeat_s", "load_timeout_s"):
        if key in limits:
            setattr(s, key, parse_duration(limits[key]))
    if "reserve_quota" in limits:
        s.reserve_quota_bytes = parse_size(limits["reserve_quota"])
    if "max_value" in limits:
        s.max_value_bytes = parse_size(limits["max_value"])
        if s.max_value_bytes > MAX_VALUE_CEILING:     # a reply carrying it must still fit in a frame
            raise ConfigError(f"[limits] max_value may be at most {format_size(MAX_VALUE_CEILING, 0)} "
                              f"(a frame is at most {format_size(MAX_FRAME_BYTES, 0)})")
    quotas = dict(data.get("quotas", {}))
    s.operator_quotas = {k: _quota(f"operator.{k}", v) for k, v in quotas.pop("operator", {}).items()}
    s.quotas = {k: _quota(k, v) for k, v in quotas.items()}
    read_dirs = data.get("services", {}).get("read_dirs", [])
    if not all(os.path.isabs(os.path.expanduser(d)) for d in read_dirs):
        raise ConfigError("[services] read_dirs must be a list of absolute folder paths")
    s.service_read_dirs = [os.path.expanduser(d) for d in read_dirs]
    s.memory_encrypt = data.get("memory", {}).get("encrypt", False)
    listen = data.get("metrics", {}).get("listen")
    if listen is not None:
        split_listen(listen)
        s.metrics_listen = listen
    if "ray" in data:
        s.ray = _ray_section(data["ray"])
    if "audit" in data:
        s.audit_syslog, s.audit_syslog_facility = _audit_section(data["audit"])
    caps = data.get("caps", {})
    if "default" in caps:
        s.default_caps = tuple(caps["default"])
    if "grantable" in caps:
        s.grantable_caps = tuple(caps["grantable"])


def _ray_section(table: dict[str, Any]) -> RaySettings:
    ray = RaySettings(**table)
    for key in ("num_gpus_per_driver", "num_cpus_per_driver"):
        if getattr(ray, key) <= 0:
            raise ConfigError(f"[ray] {key} must be a number above 0")
    if ray.listen is not None:
        try:
            split_listen(ray.listen)
        except ConfigError:
            raise ConfigError(f"[ray] listen '{ray.listen}' is not HOST:PORT (port 0: any)") from None
    return ray


def _audit_section(table: dict[str, Any]) -> tuple[str | None, str]:
    """[audit] syslog = true (/dev/log), false, or a unix socket's absolute path; facility = a syslog name."""
    from .auditsink import DEFAULT_FACILITY, DEFAULT_SYSLOG

    syslog = table.get("syslog", False)
    if syslog is True:
        syslog = DEFAULT_SYSLOG
    elif syslog is False:
        syslog = None
    elif not os.path.isabs(syslog):
        raise ConfigError("[audit] syslog must be true, false or the absolute path of a syslog socket")
    return syslog, table.get("facility", DEFAULT_FACILITY)


def _quota(key: str, value: int | str) -> int | str:
    """A quota's value: a count, a size for *_bytes, or for reserve_bytes a share of each device ("25%")."""
    if key.endswith("reserve_bytes") and isinstance(value, str) and "%" in value:
        try:
            share_of(value)
        except ValueError as exc:
            raise ConfigError(f"[quotas] {key}: {exc}") from None
        return value.strip()
    return parse_size(value) if key.endswith("bytes") else value


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
