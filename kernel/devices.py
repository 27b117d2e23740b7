"""The kernel's devices: admitting queued work to each device's driver.

Each device has a fair scheduler (kernel/fair_share.py) of queued generations and a window of
requests running at its driver, as wide as the driver's engine batches (it says so in its
Hello). `pump` moves requests from the scheduler into that window whenever a slot frees up;
`request_ended` (on the request table's event path) frees a request's place and pumps again.
What drivers say back, and what happens when one dies, is driverevents.py's.
A device whose driver is given up (`down`) fails every new request with EIO.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Callable

from llmos.specs import channel
from llmos.specs.channel import device_kind

from .errors import SyscallError, eio, enoent
from .fair_share import FairScheduler
from .requests import Request, RequestState, RequestTable

if TYPE_CHECKING:
    from .driverport import DriverPort
    from .process import ProcessTable
    from .supervisor import DriverHandle

DRIVER_UP_TIMEOUT_S = 180.0
MAX_DEVICES = 256   # local and Ray-placed, those of departed nodes included


class DeviceLimit(RuntimeError):
    """No more devices may be added; the message says why."""


class Devices:
    def __init__(self, names: list[str], drivers: "DriverPort", requests: RequestTable, procs: "ProcessTable",
                 max_running_per_process: int):
        self.names = names
        self.drivers = drivers
        self.requests = requests
        self.procs = procs
        self.max_running_per_process = max_running_per_process
        self.schedulers = {d: FairScheduler(max_running_per_process) for d in names}
        self.running: dict[str, dict[int, Request]] = {d: {} for d in names}   # device -> rid -> at the driver
        self.nodes: dict[str, str] = {}      # device -> the cluster node its driver runs on (Ray); absent: here
        self.train_turn: Callable[[Request], None] | None = None    # a fine-tune step admitted (jobs.py's)

    def add(self, name: str, node: str | None = None) -> None:
        """A device placed after the local ones (a driver on a Ray node), at boot or when a node joins.
        A device of a node that left keeps its name (its requests' history), so a churning cluster
        would add names for ever: past MAX_DEVICES, DeviceLimit."""
        if len(self.names) >= MAX_DEVICES:
            raise DeviceLimit(f"this kernel manages {len(self.names)} devices, its most ({MAX_DEVICES}); "
                              f"restart it to forget those of nodes that left")
        self.names.append(name)
        self.schedulers[name] = FairScheduler(self.max_running_per_process)
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

    def driver(self, device: str) -> "DriverHandle":
        return self.drivers.drivers[device]

    async def wait_driver(self, device: str) -> "DriverHandle":
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
    def down_error(drv: "DriverHandle") -> SyscallError:
        return eio(f"device {drv.device} is down: {drv.failure}")

    # -- admission -------------------------------------------------------------------------------

    def submit(self, req: Request) -> None:
        """Queue a generation for fair admission to its device's batch."""
        drv = self.driver(req.device)
        if drv.state == "down":
            self.requests.end(req, self.down_error(drv))
            return
        self.schedulers[req.device].enqueue(req)
        self.pump(req.device)

    def pump(self, device: str) -> None:
        """Admit queued requests to the device while its engine has room."""
        drv = self.drivers.up(device)
        if drv is None:
            return
        running = self.running[device]
        sched = self.schedulers[device]
        while len(running) < drv.hello.max_seqs:
            req = sched.pop_next()
            if req is None:
                return
            running[req.rid] = req
            if req.call == "train":          # a fine-tune job's step (kernel/jobs.py), in its fair turn
                self.train_turn(req)
                continue
            self.requests.running(req)
            self.drivers.send(device, channel.Submit(rid=req.rid, model=req.model, **req.payload,
                                                          cut_in=sched.may_cut_in(req.share),
                                                          cache_salt=self._cache_salt(req)))

    def _cache_salt(self, req: Request) -> str:
        """Whose cached prompt blocks a request may reuse: its principal's (a hit across tenants would
        tell one what another sent, by timing), and only under the same LoRA adapter (another
        adapter computes other keys and values). A service's generation is its caller's."""
        payer = self.procs.get(req.share)
        salt = payer.principal if payer is not None else req.principal
        adapter = req.payload.get("adapter")
        return f"{salt}\x00{adapter}" if adapter else salt

    def send_embed(self, req: Request, texts: list[str], normalize: bool) -> None:
        self.requests.running(req)     # beside the window: an embed is one call, not a batch slot
        self.drivers.send(req.device, channel.Embed(req.rid, req.model, texts, normalize))

    def charge(self, req: Request, tokens: int) -> None:
        """Tokens served to a request count toward the share of the process it is scheduled as."""
        self.schedulers[req.device].charge(req.share, tokens)

    def request_ended(self, req: Request, was: RequestState, error, result) -> None:
        """On the request table's event path: a request that waited here or ran here frees its place,
        and the device takes the next one in."""
        if was is RequestState.QUEUED:
            self.schedulers[req.device].remove(req)
        elif was is RequestState.RUNNING:
            self.finished(req)
        if was is not RequestState.AT_SERVICE:
            self.pump(req.device)

    def finished(self, req: Request) -> None:
        """A running request left the window (it ended, or its driver died under it)."""
        self.running[req.device].pop(req.rid, None)
        if req.call == "infer":
            self.schedulers[req.device].finished(req)

    def requeue(self, req: Request) -> None:
        """A generation whose driver died goes back to the front of its device's queue (request.device:
        the request table has moved it already, if a replica elsewhere takes it)."""
        self.schedulers[req.device].enqueue(req)

    # -- a fine-tune job's turns (kernel/jobs.py): scheduled beside generations, run by the job -----

    def queue_turn(self, turn) -> None:
        """A job's next training step waits for its fair turn on its device."""
        self.schedulers[turn.device].enqueue(turn)
        self.pump(turn.device)

    def may_step(self, turn) -> bool:
        """A turn given a slot in the window runs now, unless others' generations run there and its job has
        had more tokens than one of them (the cut-in rule): then the slot is given back (False)."""
        sched = self.schedulers[turn.device]
        others = any(r.share != turn.share for r in self.running[turn.device].values())
        if others and not sched.may_cut_in(turn.share):
            self.running[turn.device].pop(turn.rid, None)
            sched.finished(turn)
            return False
        return True

    def turn_over(self, turn, tokens: int = 0) -> None:
        """A turn ended (its step done or failed, or its job gone): its slot, or its place in the queue, is
        free; a step's tokens count toward its job's share."""
        sched = self.schedulers[turn.device]
        if self.running.get(turn.device, {}).pop(turn.rid, None) is not None:
            sched.finished(turn)
            sched.charge(turn.share, tokens)
        else:
            sched.remove(turn)
        self.pump(turn.device)

    def forget_turns(self, pid: int) -> None:
        """A job that ended leaves no share behind on any device."""
        for sched in self.schedulers.values():
            sched.forget(pid)

    def forget(self, pid: int, why: str) -> None:
        """Requests queued on any device for a process that is gone (a service's, on its behalf)."""
        for sched in self.schedulers.values():
            for req in sched.forget(pid):
                self.requests.end(req, SyscallError("ECANCELED", why))

    def backlog(self, device: str) -> float:
        """How soon the device could start one more generation: its queued and running requests
        per batch slot (less is sooner); a device whose driver is not up is last."""
        drv = self.drivers.up(device)
        if drv is None:
            return float("inf")
        return (len(self.schedulers[device]) + len(self.running[device])) / max(1, drv.hello.max_seqs)

    def describe(self, device: str) -> dict:
        out = {"queued": len(self.schedulers[device]), "running": len(self.running[device])}
        if device in self.nodes:
            out["node"] = self.nodes[device]
        return out
