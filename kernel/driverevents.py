"""What drivers say back, and what the kernel does when a driver comes up, dies or is given up.

Driver messages arrive typed (specs/channel.py) and reach their handler through a table by type
(ON_MESSAGE): token events fan out to the clients that stream them and are charged to the process
they count against and to its principal's token rate (a generation that uses the rest of the
minute's ends with EDQUOT); results and errors end requests; load, adapter and fine-tune messages
go to the model and job tables. A driver that dies has its generations requeued to resume where
they were; one given up fails what waits on it with EIO.

This sits above the tables it tells (it is built from them; none of them imports it), so the
admission code in devices.py needs to know nothing of models or jobs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from llmos.specs import channel
from llmos.specs.channel import device_kind

from . import logs
from .errors import SyscallError, eio

if TYPE_CHECKING:
    from .config import Settings
    from .devices import Devices
    from .devmem import DeviceMemory
    from .jobs import JobTable
    from .metrics import Metrics
    from .models import ModelTable
    from .process import ProcessTable
    from .quotas import Quotas
    from .requests import RequestTable
    from .supervisor import DriverHandle

log = logs.get("llmos.devices")

MAX_RESUMES = 3     # a request whose driver died this often under it may be what kills it: it ends with EIO


class DriverEvents:
    def __init__(self, settings: "Settings", devices: "Devices", requests: "RequestTable", models: "ModelTable",
                 jobs: "JobTable", procs: "ProcessTable", quotas: "Quotas", devmem: "DeviceMemory",
                 metrics: "Metrics", fail_boot: Callable[[str], None]):
        self.settings = settings
        self.devices = devices
        self.requests = requests
        self.models = models
        self.jobs = jobs
        self.procs = procs
        self.quotas = quotas
        self.devmem = devmem
        self.metrics = metrics
        self.fail_boot = fail_boot

    def on_message(self, drv: "DriverHandle", msg: channel.DriverMessage) -> None:
        """Hand a driver's message to its handler in ON_MESSAGE (Hello and DriverFailed are the supervisor's)."""
        handler = self.ON_MESSAGE.get(type(msg))
        if handler is None:
            log.warning("driver.unexpected_message", device=drv.device, op=msg.op)
            return
        handler(self, drv, msg)

    def _on_result(self, drv: "DriverHandle", msg: channel.Result) -> None:
        req = self.requests.get(msg.rid)
        if req:
            self.requests.end(req, result=msg.result)

    def _on_error(self, drv: "DriverHandle", msg: channel.Error) -> None:
        req = self.requests.get(msg.rid)
        if req:
            self.requests.end(req, SyscallError(msg.errno, msg.message))

    def _on_loaded(self, drv: "DriverHandle", msg: channel.Loaded) -> None:
        self.models.loaded(drv.device, msg)
        self.devices.pump(drv.device)

    def _on_step(self, drv: "DriverHandle", msg: channel.Events) -> None:
        if msg.kv_usage is not None:
            self.metrics.kv_said(drv.device, msg.kv_usage)
        self._on_events(msg.events)

    def _on_job(self, drv: "DriverHandle", msg: channel.TrainStepped | channel.TrainDone | channel.TrainFailed) -> None:
        self.jobs.on_driver(drv.device, msg)

    def _on_events(self, events: list[channel.TokenEvent]) -> None:
        """One message per engine step: every sequence's delta, fanned out to its client."""
        requests = self.requests
        now = time.monotonic()
        for ev in events:
            req = requests.get(ev.rid)
            if req is None:
                continue   # cancelled or reaped while the step ran
            over_quota = None
            if ev.tokens:
                self.metrics.token_event(req, ev.tokens, now)
                proc = self.procs.get(req.share)
                if proc is not None:
                    proc.tokens += ev.tokens
                over_quota = self.quotas.charge_tokens(req.payer, ev.tokens)
                self.devices.charge(req, ev.tokens)
            requests.produced(req, ev, now)
            if ev.delta or ev.logprobs:
                if req.stream:
                    req.stream_part({"delta": ev.delta, **({"logprobs": ev.logprobs} if ev.logprobs else {})})
            elif ev.prefill and req.stream:    # only a request that asked (Submit.progress) gets these
                done, total = ev.prefill
                req.stream_part({"progress": {"phase": "prefill", "done": done, "total": total}})
            if ev.finish is None:
                if over_quota is not None:     # its principal's token rate is used up: it ends here
                    requests.end(req, over_quota)
                continue
            if ev.finish == "error":
                requests.end(req, SyscallError(ev.errno, ev.message or "driver error"))
                continue
            usage = ev.usage or {"prompt_tokens": 0, "completion_tokens": req.completion_tokens}
            self.devices.charge(req, usage.get("prompt_tokens", 0))
            model = req.payload["adapter"].split("/", 1)[1] if req.payload.get("adapter") else req.model
            result = {"text": "".join(req.text), "finish_reason": ev.finish, "model": model, "usage": usage}
            if req.payload.get("logprobs"):
                result["logprobs"] = req.logprobs
            if ev.tool_calls:
                result["tool_calls"] = ev.tool_calls
            requests.end(req, result=result)

    # -- a driver's life -------------------------------------------------------------------------

    async def on_down(self, drv: "DriverHandle", why: str) -> None:
        """Its driver died: generations it ran go back to the front of their queues, to resume where
        they were once it is back (their callers see no error, only a pause); an embed is
        one short call, so it ends with EIO for its caller to retry."""
        device = drv.device
        self.models.driver_down(device)
        self.jobs.driver_down(device)
        moved_to = set()
        for req in self.requests.at_driver(device):
            if req.call != "infer" or req.resumes >= MAX_RESUMES:
                self.requests.end(req, eio(f"{why}; the driver is being restarted, retry the request"))
                continue
            self.devices.finished(req)
            self.requests.requeued(req, self.models.get(req.model))   # a ready copy elsewhere, else wait here
            self.devices.requeue(req)
            moved_to.add(req.device)
            log.info("request.requeued", rid=req.rid, device=req.device, died=device, generated=len(req.generated))
        for other in moved_to - {device}:
            self.devices.pump(other)

    async def on_failed(self, drv: "DriverHandle", why: str) -> None:
        """The driver is given up. One that never came up fails the boot (the operator asked for
        that device: a local one, not one a Ray node brought); otherwise what waits on it ends with
        EIO, and so will whatever comes later."""
        if not drv.ever_up and drv.device not in self.devices.nodes:
            self.fail_boot(f"device {drv.device} cannot be used: {why}")
        error = self.devices.down_error(drv)
        for req in list(self.requests):     # queued or at the driver
            if req.device == drv.device:
                self.requests.end(req, error)
        for entry in self.models.on_device(drv.device):
            if drv.device in self.devmem.devices:
                self.models.evict(entry, f"device {drv.device} is down")
            if not entry.loaded.done():
                entry.loaded.set_exception(error)
                entry.loaded.exception()   # mark retrieved: nobody may be waiting

    async def on_up(self, drv: "DriverHandle") -> None:
        device = drv.device
        node = self.devices.nodes.get(device)
        cpus = [d for d in self.devices.names if device_kind(d) == "cpu" and self.devices.nodes.get(d) == node]
        measured = drv.hello.total_bytes // len(cpus) if device in cpus else drv.hello.total_bytes  # they share a node's RAM
        total = self.settings.device_memory.get(device) or measured
        self.devmem.add_device(device, device_kind(device), total)
        self.models.reload_after_crash(device)
        self.devices.pump(device)

    # What each message a driver sends does, by its type; tests/test_devices.py holds the table to
    # the messages drivers/ sends. A Pong only proves life, which the supervisor has noted already.
    ON_MESSAGE: dict[type[channel.DriverMessage], Callable[["DriverEvents", "DriverHandle", Any], None]] = {
        channel.Events: _on_step,
        channel.Result: _on_result,
        channel.Error: _on_error,
        channel.Loaded: _on_loaded,
        channel.LoadProgress: lambda self, drv, msg: self.models.load_progress(drv.device, msg),
        channel.LoadFailed: lambda self, drv, msg: self.models.load_failed(drv.device, msg),
        channel.TrainStepped: _on_job,
        channel.TrainDone: _on_job,
        channel.TrainFailed: _on_job,
        channel.AdapterLoaded: lambda self, drv, msg: self.models.adapters.loaded(drv.device, msg),
        channel.AdapterFailed: lambda self, drv, msg: self.models.adapters.failed(drv.device, msg),
        channel.Pong: lambda self, drv, msg: None,
    }
