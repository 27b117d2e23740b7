"""The kernel's devices: admitting queued work to each device's driver, and what drivers say back.

Each device has a fair scheduler (kernel/fair_share.py) of queued generations and a window of
requests running at its driver, as wide as the driver's engine batches (it says so in its
Hello). `pump` moves requests from the scheduler into that window whenever a slot frees up.
Driver messages arrive typed (specs/channel.py) and reach their handler through a table by type
(ON_MESSAGE): token events fan out to the clients that stream them and are charged to the process
they count against and to its principal's token rate (a generation that uses the rest of the
minute's ends with EDQUOT); results and errors end requests.
A device whose driver is given up (`down`) fails what waits on it and every new request with EIO.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

from llmos.specs import channel
from llmos.specs.channel import device_kind

from . import logs
from .errors import SyscallError, eio, enoent
from .requests import Request
from .fair_share import FairScheduler
from .supervisor import DriverHandle

if TYPE_CHECKING:
    from .kernel import Kernel

log = logs.get("llmos.devices")

DRIVER_UP_TIMEOUT_S = 180.0
MAX_DEVICES = 256   # local and Ray-placed, those of departed nodes included


class DeviceLimit(RuntimeError):
    """No more devices may be added; the message says why."""

MAX_RESUMES = 3     # a request whose driver died this often under it may be what kills it: it ends with EIO


class Devices:
    def __init__(self, kernel: "Kernel", names: list[str]):
        self.k = kernel
        self.names = names
        self.schedulers = {d: FairScheduler(kernel.settings.max_running_per_process) for d in names}
        self.running: dict[str, dict[int, Request]] = {d: {} for d in names}   # device -> rid -> at the driver
        self.nodes: dict[str, str] = {}      # device -> the cluster node its driver runs on (Ray); absent: here

    def add(self, name: str, node: str | None = None) -> None:
        """A device placed after the local ones (a driver on a Ray node), at boot or when a node joins.
        A device of a node that left keeps its name (its requests' history), so a churning cluster
        would add names for ever: past MAX_DEVICES, DeviceLimit."""
        if len(self.names) >= MAX_DEVICES:
            raise DeviceLimit(f"this kernel manages {len(self.names)} devices, its most ({MAX_DEVICES}); "
                              f"restart it to forget those of nodes that left")
        self.names.append(name)
        self.schedulers[name] = FairScheduler(self.k.settings.max_running_per_process)
        self.running[name] = {}
        if node is not None:
            self.nodes[name] = node

    def pick(self, wanted: str) -> str:
        if wanted == "auto":
            gpus = [d for d in self.names if device_kind(d) == "cuda"]
            return gpus[0] if gpus else self.names[0]
        if wanted not in self.schedulers:
            raise enoent(f"no device '{wanted}'; this kernel manages {', '.join(self.names)}")
        return wanted

    def driver(self, device: str) -> DriverHandle:
        return self.k.supervisor.drivers[device]

    async def wait_driver(self, device: str) -> DriverHandle:
        """The device's driver once it is up; EIO at once if it is down, or if it is not up in time."""
        drv = self.driver(device)
        if drv.state != "up" or not drv.up.is_set():
            waits = [asyncio.ensure_future(drv.up.wait()), asyncio.ensure_future(drv.gone.wait())]
            try:
                await asyncio.wait(waits, timeout=DRIVER_UP_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if drv.state == "down":
                raise self.down_error(drv)
            if not drv.up.is_set():
                raise eio(f"the driver for {device} is not up (state: {drv.state})")
        return drv

    @staticmethod
    def down_error(drv: DriverHandle) -> SyscallError:
        return eio(f"device {drv.device} is down: {drv.failure}")

    # -- admission -------------------------------------------------------------------------------

    def submit(self, req: Request) -> None:
        """Queue a generation for fair admission to its device's batch."""
        drv = self.driver(req.device)
        if drv.state == "down":
            self.k.requests.end(req, self.down_error(drv))
            return
        self.schedulers[req.device].enqueue(req)
        self.pump(req.device)

    def pump(self, device: str) -> None:
        """Admit queued requests to the device while its engine has room."""
        drv = self.k.supervisor.drivers.get(device)
        if drv is None or drv.state != "up" or drv.hello is None:
            return
        running = self.running[device]
        sched = self.schedulers[device]
        while len(running) < drv.hello.max_seqs:
            req = sched.pop_next()
            if req is None:
                return
            running[req.rid] = req
            if req.call == "train":          # a fine-tune job's step (kernel/jobs.py), in its fair turn
                self.k.jobs.admitted(req)
                continue
            self.k.requests.running(req)
            self.k.supervisor.send(device, channel.Submit(rid=req.rid, model=req.model, **req.payload,
                                                          cut_in=sched.may_cut_in(req.share),
                                                          cache_salt=self._cache_salt(req)))

    def _cache_salt(self, req: Request) -> str:
        """Whose cached prompt blocks a request may reuse: its principal's (a hit across tenants would
        tell one what another sent, by timing), and only under the same LoRA adapter (another
        adapter computes other keys and values). A service's generation is its caller's."""
        payer = self.k.procs.get(req.share)
        salt = payer.principal if payer is not None else req.principal
        adapter = req.payload.get("adapter")
        return f"{salt}\x00{adapter}" if adapter else salt

    def send_embed(self, req: Request, texts: list[str], normalize: bool) -> None:
        self.k.requests.running(req)     # beside the window: an embed is one call, not a batch slot
        self.k.supervisor.send(req.device, channel.Embed(req.rid, req.model, texts, normalize))

    def dequeue(self, req: Request) -> None:
        """A queued request ended before it ran."""
        self.schedulers[req.device].remove(req)

    def finished(self, req: Request) -> None:
        """A running request ended: its slot in the window is free."""
        self.running[req.device].pop(req.rid, None)
        if req.call == "infer":
            self.schedulers[req.device].finished(req)

    def forget(self, pid: int, why: str) -> None:
        """Requests queued on any device for a process that is gone (a service's, on its behalf)."""
        for sched in self.schedulers.values():
            for req in sched.forget(pid):
                self.k.requests.end(req, SyscallError("ECANCELED", why))

    def backlog(self, device: str) -> float:
        """How soon the device could start one more generation: its queued and running requests
        per batch slot (less is sooner); a device whose driver is not up is last."""
        drv = self.k.supervisor.drivers.get(device)
        if drv is None or drv.state != "up" or drv.hello is None:
            return float("inf")
        return (len(self.schedulers[device]) + len(self.running[device])) / max(1, drv.hello.max_seqs)

    def describe(self, device: str) -> dict:
        out = {"queued": len(self.schedulers[device]), "running": len(self.running[device])}
        if device in self.nodes:
            out["node"] = self.nodes[device]
        return out

    # -- what drivers say ------------------------------------------------------------------------

    def on_message(self, drv: DriverHandle, msg: channel.DriverMessage) -> None:
        """Hand a driver's message to its handler in ON_MESSAGE (Hello and DriverFailed are the supervisor's)."""
        handler = self.ON_MESSAGE.get(type(msg))
        if handler is None:
            log.warning("driver.unexpected_message", device=drv.device, op=msg.op)
            return
        handler(self, drv, msg)

    def _on_result(self, drv: DriverHandle, msg: channel.Result) -> None:
        req = self.k.requests.get(msg.rid)
        if req:
            self.k.requests.end(req, result=msg.result)

    def _on_error(self, drv: DriverHandle, msg: channel.Error) -> None:
        req = self.k.requests.get(msg.rid)
        if req:
            self.k.requests.end(req, SyscallError(msg.errno, msg.message))

    def _on_loaded(self, drv: DriverHandle, msg: channel.Loaded) -> None:
        self.k.models.loaded(drv.device, msg)
        self.pump(drv.device)

    def _on_step(self, drv: DriverHandle, msg: channel.Events) -> None:
        self._on_events(drv.device, msg.events)

    def _on_job(self, drv: DriverHandle, msg: channel.TrainStepped | channel.TrainDone | channel.TrainFailed) -> None:
        self.k.jobs.on_driver(drv.device, msg)

    def _on_events(self, device: str, events: list[channel.TokenEvent]) -> None:
        """One message per engine step: every sequence's delta, fanned out to its client."""
        k = self.k
        sched = self.schedulers[device]
        for ev in events:
            req = k.requests.get(ev.rid)
            if req is None:
                continue   # cancelled or reaped while the step ran
            over_quota = None
            if ev.tokens:
                req.completion_tokens += ev.tokens
                proc = k.procs.get(req.share)
                if proc is not None:
                    proc.tokens += ev.tokens
                over_quota = k.quotas.charge_tokens(req.payer, ev.tokens)
                sched.charge(req.share, ev.tokens)
            if ev.ids:
                req.generated += ev.ids
            if ev.logprobs:
                req.logprobs += ev.logprobs
            if ev.delta or ev.logprobs:
                req.text.append(ev.delta)
                if req.stream:
                    k.dispatch.send_more(req, {"delta": ev.delta, **({"logprobs": ev.logprobs} if ev.logprobs else {})})
            elif ev.prefill and req.stream:    # only a request that asked (Submit.progress) gets these
                done, total = ev.prefill
                k.dispatch.send_more(req, {"progress": {"phase": "prefill", "done": done, "total": total}})
            if ev.finish is None:
                if over_quota is not None:     # its principal's token rate is used up: it ends here
                    k.requests.end(req, over_quota)
                continue
            if ev.finish == "error":
                k.requests.end(req, SyscallError(ev.errno, ev.message or "driver error"))
                continue
            usage = ev.usage or {"prompt_tokens": 0, "completion_tokens": req.completion_tokens}
            sched.charge(req.share, usage.get("prompt_tokens", 0))
            model = req.payload["adapter"].split("/", 1)[1] if req.payload.get("adapter") else req.model
            result = {"text": "".join(req.text), "finish_reason": ev.finish, "model": model, "usage": usage}
            if req.payload.get("logprobs"):
                result["logprobs"] = req.logprobs
            if ev.tool_calls:
                result["tool_calls"] = ev.tool_calls
            k.requests.end(req, result=result)

    async def on_down(self, drv: DriverHandle, why: str) -> None:
        """Its driver died: generations it ran go back to the front of their queues, to resume where
        they were once it is back (their callers see no error, only a pause); an embed is
        one short call, so it ends with EIO for its caller to retry."""
        device = drv.device
        self.k.models.driver_down(device)
        self.k.jobs.driver_down(device)
        moved_to = set()
        for req in self.k.requests.at_driver(device):
            self.running[device].pop(req.rid, None)
            if req.call != "infer" or req.resumes >= MAX_RESUMES:
                self.k.requests.end(req, eio(f"{why}; the driver is being restarted, retry the request"))
                continue
            self.schedulers[device].finished(req)
            replica = self.k.models.get(req.model)     # a ready copy elsewhere, else this device's, reloading
            self.k.requests.requeued(req, replica.device if replica is not None else device)
            self.schedulers[req.device].enqueue(req)
            moved_to.add(req.device)
            log.info("request.requeued", rid=req.rid, device=req.device, died=device, generated=len(req.generated))
        for other in moved_to - {device}:
            self.pump(other)

    async def on_failed(self, drv: DriverHandle, why: str) -> None:
        """The driver is given up. One that never came up fails the boot (the operator asked for
        that device: a local one, not one a Ray node brought); otherwise what waits on it ends with
        EIO, and so will whatever comes later."""
        if not drv.ever_up and drv.device not in self.nodes:
            self.k.fail_boot(f"device {drv.device} cannot be used: {why}")
        error = self.down_error(drv)
        for req in list(self.k.requests):     # queued or at the driver
            if req.device == drv.device:
                self.k.requests.end(req, error)
        for entry in self.k.models.on_device(drv.device):
            if drv.device in self.k.devmem.devices:
                self.k.models.evict(entry, f"device {drv.device} is down")
            if not entry.loaded.done():
                entry.loaded.set_exception(error)
                entry.loaded.exception()   # mark retrieved: nobody may be waiting

    async def on_up(self, drv: DriverHandle) -> None:
        device = drv.device
        node = self.nodes.get(device)
        cpus = [d for d in self.names if device_kind(d) == "cpu" and self.nodes.get(d) == node]
        measured = drv.hello.total_bytes // len(cpus) if device in cpus else drv.hello.total_bytes  # they share a node's RAM
        total = self.k.settings.device_memory.get(device) or measured
        self.k.devmem.add_device(device, device_kind(device), total)
        self.k.models.reload_after_crash(device)
        self.pump(device)

    # What each message a driver sends does, by its type; tests/test_devices.py holds the table to
    # the messages drivers/ sends. A Pong only proves life, which the supervisor has noted already.
    ON_MESSAGE: dict[type[channel.DriverMessage], Callable[["Devices", DriverHandle, Any], None]] = {
        channel.Events: _on_step,
        channel.Result: _on_result,
        channel.Error: _on_error,
        channel.Loaded: _on_loaded,
        channel.LoadProgress: lambda self, drv, msg: self.k.models.load_progress(drv.device, msg),
        channel.LoadFailed: lambda self, drv, msg: self.k.models.load_failed(drv.device, msg),
        channel.TrainStepped: _on_job,
        channel.TrainDone: _on_job,
        channel.TrainFailed: _on_job,
        channel.AdapterLoaded: lambda self, drv, msg: self.k.models.adapters.loaded(drv.device, msg),
        channel.AdapterFailed: lambda self, drv, msg: self.k.models.adapters.failed(drv.device, msg),
        channel.Pong: lambda self, drv, msg: None,
    }
