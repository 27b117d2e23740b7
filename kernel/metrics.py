"""The kernel's figures: Prometheus metrics (one registry per kernel) and the last minute for `stats`.

Two kinds of figure, kept two ways so neither can drift:
- Events (a reply, a token, a finished generation, a refused key) are counted where they happen,
  into prometheus_client counters and histograms; `stats` reads its totals back from them.
- State (queue depth, running requests, memory, loaded models, processes, restarts, readiness) is
  never copied: `TableCollector` reads it from the kernel's tables at scrape time.

Labels are bounded (specs/ABI.md, Metrics and health): a syscall name from the table (or
"unknown"), an errno name, a device, a model in the model table, a finish reason. Never a pid,
a request id or a string a client chose. Per-process figures live only in the `stats` window.

`stats` shows a non-admin only its own principal's activity, so beside the exported counters the
same events are kept per principal (replies by syscall and errno, tokens, the window's samples and
seconds): bounded by the user table (a removed user's are forgotten) and the syscall table.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from llmos.specs import SYSCALLS
from llmos.specs.protocol import ERRNOS

if TYPE_CHECKING:
    from .devices import Devices
    from .devmem import DeviceMemory
    from .driverport import DriverPort
    from .health import Readiness
    from .models import ModelTable
    from .process import ProcessTable
    from .requests import Request
    from .services import ServiceManager

WINDOW_S = 60.0            # what `stats` calls recent
MAX_SAMPLES = 4096         # latency observations kept per kind (the latest), whatever the load

# Buckets after vLLM's, with finer low ends: a small model on a GPU answers in milliseconds.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
               5.0, 10.0, 20.0, 80.0)
E2E_BUCKETS = (0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
LATENCIES = ("ttft_s", "itl_s", "e2e_s")

def syscall_label(call: object) -> str:
    """A call's name as a label: the table's names only, so a client cannot mint label values."""
    return call if isinstance(call, str) and call in SYSCALLS else "unknown"


class RecentWindow:
    """The last WINDOW_S seconds: latency samples, and tokens per second in one-second buckets by pid,
    each marked with the principal it counts for; a reader given principal=None reads every one's."""

    def __init__(self) -> None:
        self.samples: dict[str, deque[tuple[float, float, str]]] = {k: deque(maxlen=MAX_SAMPLES) for k in LATENCIES}
        self.seconds: deque[tuple[int, dict[tuple[int, str], int]]] = deque(maxlen=int(WINDOW_S) + 1)

    def latency(self, kind: str, seconds: float, now: float, principal: str = "") -> None:
        self.samples[kind].append((now, seconds, principal))

    def tokens(self, pid: int, n: int, now: float, principal: str = "") -> None:
        second = int(now)
        if not self.seconds or self.seconds[-1][0] != second:
            self.seconds.append((second, {}))
        by_pid = self.seconds[-1][1]
        by_pid[pid, principal] = by_pid.get((pid, principal), 0) + n

    def percentiles(self, kind: str, now: float, principal: str | None = None) -> dict:
        values = sorted(v for t, v, who in self.samples[kind]
                        if now - t <= WINDOW_S and principal in (None, who))
        if not values:
            return {"p50": None, "p95": None, "count": 0}
        return {"p50": nearest_rank(values, 0.50), "p95": nearest_rank(values, 0.95), "count": len(values)}

    def tokens_per_s(self, now: float, span: float, principal: str | None = None) -> tuple[float, dict[int, float]]:
        """Generated tokens per second over the window (or over `span`, if the kernel is younger), in
        all and by pid."""
        span = max(1.0, min(WINDOW_S, span))
        by_pid: dict[int, int] = {}
        for second, counts in self.seconds:
            if now - second <= WINDOW_S:
                for (pid, who), n in counts.items():
                    if principal in (None, who):
                        by_pid[pid] = by_pid.get(pid, 0) + n
        return sum(by_pid.values()) / span, {pid: n / span for pid, n in by_pid.items()}


def nearest_rank(sorted_values: list[float], p: float) -> float:
    return sorted_values[max(0, math.ceil(p * len(sorted_values)) - 1)]


class Metrics:
    """Counters and histograms observed where things happen, and the registry that exports them."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.syscalls = Counter("llmos_syscalls", "Replies by syscall and outcome (errno OK on success)",
                                ["syscall", "errno"], registry=r)
        self.prompt_tokens = Counter("llmos_prompt_tokens", "Prompt tokens of finished generations", ["model"],
                                     registry=r)
        self.generation_tokens = Counter("llmos_generation_tokens", "Tokens generated", ["model"], registry=r)
        self.ttft = Histogram("llmos_time_to_first_token_seconds", "Request accepted to its first token event",
                              ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("llmos_inter_token_latency_seconds", "Between successive token events of a request",
                             ["model"], buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("llmos_e2e_request_latency_seconds", "Request accepted to its final reply",
                             ["model"], buckets=E2E_BUCKETS, registry=r)
        self.success = Counter("llmos_request_success", "Finished generations by finish reason",
                               ["model", "finish_reason"], registry=r)
        self.auth_failures = Counter("llmos_auth_failures", "Connections or keys refused", ["reason"], registry=r)
        self.auth_failures.labels("bad_key")     # exported at 0 from boot: a rate() sees the first failure
        self.kv_usage: dict[str, float] = {}     # device -> fraction, as its driver last said
        self.window = RecentWindow()
        self.calls: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)    # principal -> (syscall, errno) -> n
        self.tokens: dict[str, dict[str, int]] = defaultdict(lambda: {"prompt": 0, "generated": 0})  # by principal

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- observations ------------------------------------------------------------------------------

    def reply(self, call: object, errno: str, principal: str | None = None) -> None:
        """One final reply to a client: errno "OK" for a result; counted for its principal too."""
        key = (syscall_label(call), errno if errno == "OK" or errno in ERRNOS else "EIO")
        self.syscalls.labels(*key).inc()
        if principal:
            counts = self.calls[principal]
            counts[key] = counts.get(key, 0) + 1

    def forget(self, principal: str) -> None:
        """A removed user's own figures (the totals keep what it did)."""
        self.calls.pop(principal, None)
        self.tokens.pop(principal, None)

    def auth_failure(self, reason: str) -> None:
        self.auth_failures.labels(reason).inc()

    def kv_said(self, device: str, usage: float) -> None:
        """The share of its KV cache a device's driver says is in use, after a step (its own figure)."""
        self.kv_usage[device] = float(usage)

    def token_event(self, req: "Request", tokens: int, now: float) -> None:
        """Tokens of a request, counted for its payer (a service's generation is its caller's); told by
        driverevents.py before the request table records them, so the request's times are the last step's."""
        if req.first_token_at is None:      # read here; the request table writes them (RequestTable.produced)
            self.ttft.labels(req.model).observe(now - req.created)
            self.window.latency("ttft_s", now - req.created, now, req.payer)
        else:
            self.itl.labels(req.model).observe(now - req.last_token_at)
            self.window.latency("itl_s", now - req.last_token_at, now, req.payer)
        self.generation_tokens.labels(req.model).inc(tokens)
        self.tokens[req.payer]["generated"] += tokens
        self.window.tokens(req.share, tokens, now, req.payer)

    def request_ended(self, req: "Request", was, error, result: dict | None) -> None:
        """On the request table's event path: a generation that finished with an answer is counted."""
        if error is None and result is not None and req.call == "infer":
            self.generation_finished(req, result)

    def generation_finished(self, req: "Request", result: dict) -> None:
        now = time.monotonic()
        prompt = (result.get("usage") or {}).get("prompt_tokens", 0)
        self.e2e.labels(req.model).observe(now - req.created)
        self.window.latency("e2e_s", now - req.created, now, req.payer)
        self.success.labels(req.model, str(result.get("finish_reason"))).inc()
        self.prompt_tokens.labels(req.model).inc(prompt)
        self.tokens[req.payer]["prompt"] += prompt

    # -- read back, for `stats` --------------------------------------------------------------------

    def replies(self, principal: str | None = None) -> dict:
        """Replies by syscall and errno since boot: every principal's, or one's."""
        if principal is None:
            counts = [(s.labels["syscall"], s.labels["errno"], int(s.value)) for s in _totals(self.syscalls)]
        else:
            counts = [(call, errno, n) for (call, errno), n in self.calls.get(principal, {}).items()]
        total = errors = 0
        by_syscall: dict[str, dict] = {}
        for call, errno, n in counts:
            row = by_syscall.setdefault(call, {"ok": 0, "errors": {}})
            total += n
            if errno == "OK":
                row["ok"] += n
            else:
                errors += n
                row["errors"][errno] = n
        return {"total": total, "errors": errors, "by_syscall": by_syscall}

    def token_totals(self, principal: str | None = None) -> dict:
        if principal is not None:
            return dict(self.tokens.get(principal, {"prompt": 0, "generated": 0}))
        return {"prompt": int(sum(s.value for s in _totals(self.prompt_tokens))),
                "generated": int(sum(s.value for s in _totals(self.generation_tokens)))}

    def auth_failure_total(self) -> int:
        return int(sum(s.value for s in _totals(self.auth_failures)))


def _totals(counter: Counter):
    return [s for family in counter.collect() for s in family.samples if s.name.endswith("_total")]


class TableCollector:
    """State read from the kernel's tables when Prometheus scrapes, so it cannot drift from them."""

    def __init__(self, metrics: Metrics, devices: "Devices", devmem: "DeviceMemory", models: "ModelTable",
                 drivers: "DriverPort", procs: "ProcessTable", services: "ServiceManager", health: "Readiness"):
        self.metrics = metrics
        self.devices = devices
        self.devmem = devmem
        self.models = models
        self.drivers = drivers
        self.procs = procs
        self.services = services
        self.health = health
        metrics.registry.register(self)

    def describe(self):
        return []     # names are only known by collecting; the registry then checks nothing at register

    def collect(self):
        names = list(self.devices.names)
        running = GaugeMetricFamily("llmos_num_requests_running", "Requests the device's driver is generating",
                                    labels=["device"])
        waiting = GaugeMetricFamily("llmos_num_requests_waiting", "Requests queued for the device", labels=["device"])
        kv = GaugeMetricFamily("llmos_kv_cache_usage_perc", "KV cache in use, 0..1, as the driver last said",
                               labels=["device"])
        used = GaugeMetricFamily("llmos_device_memory_used_bytes", "Device memory used (models and reservations)",
                                 labels=["device"])
        reserved = GaugeMetricFamily("llmos_device_memory_reserved_bytes", "Device memory reserved by alloc_gpu",
                                     labels=["device"])
        total = GaugeMetricFamily("llmos_device_memory_total_bytes", "Device memory the kernel manages",
                                  labels=["device"])
        loaded = GaugeMetricFamily("llmos_models_loaded", "Ready models on the device", labels=["device"])
        restarts = CounterMetricFamily("llmos_driver_restarts", "Driver restarts after a crash", labels=["device"])
        for device in names:
            queue = self.devices.describe(device)
            running.add_metric([device], queue["running"])
            waiting.add_metric([device], queue["queued"])
            if device in self.metrics.kv_usage:
                kv.add_metric([device], self.metrics.kv_usage[device])
            acct = self.devmem.devices.get(device)
            used.add_metric([device], acct.used_bytes if acct else 0)
            reserved.add_metric([device], acct.reserved_bytes if acct else 0)
            total.add_metric([device], acct.total_bytes if acct else 0)
            loaded.add_metric([device], sum(1 for e in self.models.on_device(device) if e.state == "ready"))
            drv = self.drivers.get(device)
            restarts.add_metric([device], drv.restarts if drv else 0)
        yield from (running, waiting, kv, used, reserved, total, loaded, restarts)
        yield GaugeMetricFamily("llmos_processes", "Live processes", value=len(self.procs))
        yield CounterMetricFamily("llmos_service_host_restarts", "Service host restarts",
                                  value=self.services.describe()["restarts"])
        yield GaugeMetricFamily("llmos_ready", "1 when /health/ready would answer 200",
                                value=1 if self.health.state()[0] else 0)
