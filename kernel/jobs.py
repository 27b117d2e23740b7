"""Fine-tune jobs: LoRA training as a process of the kernel, sharing its device fairly with inference.

A job belongs to the principal that submitted it and runs on the device that holds its base
model. Before it starts it reserves device memory through the kernel's accounting (a copy of the
base weights, which the driver trains on so that serving is untouched, plus the LoRA weights,
their gradients and AdamW state, and activations for batch_size x max_seq_len): ENOMEM when that
cannot fit, given back when the job ends. Each training step is a turn (TrainTurn) in the
device's fair scheduler with a share (a negative pid) of its own, so inference from other
processes keeps its share; the tokens a step reads are charged to the job as a generation's are.

Its record, data and latest checkpoint live on disk (kernel/jobstore.py), so a job the kernel
did not finish (it was stopped or killed, or its driver died) resumes from its last checkpoint.
A finished job writes its adapter as `BASE:NAME` in the owner's namespace (kernel/adapters/store.py).

    queued (admitted, waiting for its turn) -> running -> done | failed | cancelled
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import secrets
import time
from typing import TYPE_CHECKING, Callable

from llmos.specs import channel
from llmos.specs.units import format_size

from . import logs
from .errors import SyscallError, eio
from .job import FINISHED, DriverRestarted, Job, TrainTurn, model_shape, steps_of, train_bytes
from .jobstore import JobStore
from .quotas import reservations_of

if TYPE_CHECKING:
    from pathlib import Path

    from .devices import Devices
    from .devmem import DeviceMemory
    from .driverport import DriverPort
    from .models import ModelTable
    from .process import ProcessTable
    from .quotas import Quotas

log = logs.get("llmos.jobs")

MAX_DRIVER_RESTARTS = 3        # a job whose driver died this often under it may be what kills it: it fails
RETRY_TURN_S = 0.02            # a turn that waits for inference to catch up asks again this soon
MAX_FINISHED_PER_PRINCIPAL = 16    # ended jobs kept (listed, with their data); older ones are forgotten


class JobTable:
    def __init__(self, state_dir: "Path", models: "ModelTable", devices: "Devices", devmem: "DeviceMemory",
                 drivers: "DriverPort", quotas: "Quotas", procs: "ProcessTable", spawn: Callable[..., asyncio.Task]):
        """procs: to count what a job's owner holds reserved besides; spawn: runs a job as a task the kernel owns."""
        self.models = models
        self.devices = devices
        self.devmem = devmem
        self.drivers = drivers
        self.quotas = quotas
        self.procs = procs
        self.spawn = spawn
        self.store = JobStore(state_dir)
        self.jobs: dict[str, Job] = {}
        self._pids = itertools.count(1)
        self._rids = itertools.count(1)
        self._seq = itertools.count()

    def __iter__(self):
        return iter(list(self.jobs.values()))

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def active(self, principal: str) -> int:
        return sum(1 for j in self.jobs.values() if j.owner == principal and j.state not in FINISHED)

    def _new(self, record: dict) -> Job:
        job = Job(record, -next(self._pids))
        self.jobs[job.id] = job
        return job

    # -- submitting, resuming, cancelling --------------------------------------------------------

    async def submit(self, owner: str, base: str, name: str, hyper: dict, examples: list[dict]) -> Job:
        """Admit a new job (memory reserved: ENOMEM here, nothing written), then persist and start it."""
        data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples).encode()
        record = {"job": secrets.token_hex(6), "owner": owner, "base": base, "name": name, "hyper": hyper,
                  "data_sha256": hashlib.sha256(data).hexdigest(), "examples": len(examples),
                  "steps": steps_of(len(examples), hyper), "state": "queued", "step": 0, "loss": None,
                  "checkpoint_step": 0, "error": "", "created": time.time()}
        job = self._new(record)
        try:
            await self._admit(job)
            await asyncio.to_thread(self.store.create, record, data)
        except BaseException:
            self._release(job)
            del self.jobs[job.id]
            raise
        self._start(job)
        log.info("job.submitted", job=job.id, owner=owner, model=f"{base}:{name}", steps=record["steps"],
                 device=job.device, reserved_bytes=job.reserved)
        return job

    def resume(self) -> None:
        """At boot: every job of the state dir is listed again; one left unfinished starts again."""
        for record in self.store.records():
            job = self._new(record)
            if job.state not in FINISHED:
                record["state"] = "queued"
                self._start(job)
                log.info("job.resuming", job=job.id, from_step=record.get("checkpoint_step", 0))

    def _forget_old(self, owner: str) -> None:
        """Keep the principal's MAX_FINISHED_PER_PRINCIPAL latest ended jobs; remove the rest, folders too."""
        ended = [j for j in self.jobs.values() if j.owner == owner and j.state in FINISHED]
        for old in sorted(ended, key=lambda j: j.record["created"])[:-MAX_FINISHED_PER_PRINCIPAL]:
            del self.jobs[old.id]
            self.store.remove(old.id)

    def cancel(self, job: Job) -> None:
        if job.state in FINISHED or job.cancelling:
            return
        job.cancelling = True
        if job.task is not None:
            job.task.cancel()

    def _start(self, job: Job) -> None:
        job.task = self.spawn(self._run(job), f"job-{job.id}")

    # -- a job's life ----------------------------------------------------------------------------

    async def _admit(self, job: Job) -> None:
        """Its base model loaded (and held), and device memory for training reserved."""
        r = job.record
        entry = await self.models.ensure(r["base"], "auto", None)
        if entry.kind != "generate":
            raise SyscallError("EINVAL", f"'{r['base']}' is an embedding model; fine-tune a generate model")
        if entry.quant:
            raise SyscallError("EINVAL", f"'{r['base']}' is loaded {entry.quant}; fine-tune a model loaded without quant")
        if entry.context_length and r["hyper"]["max_seq_len"] > entry.context_length:
            raise SyscallError("EINVAL", f"max_seq_len {r['hyper']['max_seq_len']} is over {r['base']}'s context "
                                         f"of {entry.context_length} tokens")
        job.device = entry.device
        entry.refs.add(job.pid)      # not idle while the job trains on it: never evicted under it
        shape = await asyncio.to_thread(model_shape, entry.spec.path)
        need = train_bytes(entry.weight_bytes, shape, r["hyper"])
        self.quotas.check_reserve(job.owner, job.device, self.devmem.devices[job.device].total_bytes,
                                  reservations_of(self.procs, self, job.owner), need, "tune")
        if not self.devmem.devices[job.device].can_fit(need):
            self.models.make_room(job.device, need, f"fine-tune job {job.id} ({format_size(entry.weight_bytes)} weights to "
                                                 f"train, activations of {r['hyper']['batch_size']} x "
                                                 f"{r['hyper']['max_seq_len']} tokens)", exclude=entry)
        job.handle, job.reserved = self.devmem.reserve(job.device, job.pid, need), need

    def _release(self, job: Job) -> None:
        """Give back what the job holds: its turn, its reservation, its hold on the base model."""
        self._drop_turn(job)
        if job.handle is not None and job.device in self.devmem.devices:
            self.devmem.release(job.device, job.handle)
        job.handle, job.reserved = None, 0
        for entry in self.models.replicas(job.record["base"]):
            entry.refs.discard(job.pid)
        self.devices.forget_turns(job.pid)

    async def _run(self, job: Job) -> None:
        r = job.record
        try:
            restarts = 0
            while True:
                try:
                    if job.handle is None:
                        await self._admit(job)
                    files = await self._train(job)
                    break
                except DriverRestarted:
                    restarts += 1
                    if restarts > MAX_DRIVER_RESTARTS:
                        raise eio(f"the driver of {job.device} died {restarts} times under this job") from None
                    log.warning("job.restarting", job=job.id, from_step=r.get("checkpoint_step", 0))
            await self._write(job, self.store.write_adapter, r, files)
            self._end(job, "done")
        except asyncio.CancelledError:
            if job.writing is not None:     # let a write in flight land before the job's last job.json
                await asyncio.wait([job.writing])
            if not job.cancelling:        # the kernel is stopping: the job resumes at its next boot
                self._release(job)
                raise
            self._end(job, "cancelled")
        except SyscallError as exc:
            self._end(job, "failed", f"{exc.errno}: {exc.message}")
        except Exception as exc:
            log.exception("job.crashed", job=job.id)
            self._end(job, "failed", f"EIO: {exc.__class__.__name__}: {exc}")

    async def _train(self, job: Job) -> dict[str, bytes]:
        """Start (or restart) the job at its driver from its last checkpoint, step it through its turns to
        the end, and return the adapter's files."""
        r = job.record
        await self.models.ensure(r["base"], job.device, None)     # after a driver restart: loaded again
        checkpoint = await asyncio.to_thread(self.store.checkpoint, r)
        examples = await asyncio.to_thread(self.store.data, job.id)
        r["step"] = r.get("checkpoint_step", 0)
        job.inbox = asyncio.Queue()
        hyper = {**r["hyper"], "steps": r["steps"]}
        self.drivers.send(job.device, channel.TrainStart(job.id, r["base"], examples, hyper, checkpoint, r["step"]))
        log.info("job.started", job=job.id, device=job.device, from_step=r["step"], steps=r["steps"])
        while r["step"] < r["steps"]:
            started = time.monotonic()
            self._queue_turn(job, r["step"] + 1)
            msg = await self._answer(job)
            if not isinstance(msg, channel.TrainStepped) or msg.step != r["step"] + 1:
                raise eio(f"the driver answered step {r['step'] + 1} with {msg.op}")
            job.stepped(msg.step, msg.loss, msg.tokens, time.monotonic() - started)
            if r["state"] != "running" or msg.checkpoint or msg.step == r["steps"]:
                r["state"] = "running"
                if msg.checkpoint:
                    await self._write(job, self.store.write_checkpoint, r, msg.step, msg.checkpoint)
                else:
                    await self._write(job, self.store.save, r)
        msg = await self._answer(job)
        if not isinstance(msg, channel.TrainDone):
            raise eio(f"the driver ended the job with {msg.op}")
        return msg.files

    async def _write(self, job: Job, write, *args):
        """One of the job's writes, on a thread; a cancel does not stop it half-way (see _run)."""
        job.writing = asyncio.ensure_future(asyncio.to_thread(write, *args))
        return await asyncio.shield(job.writing)

    async def _answer(self, job: Job) -> channel.DriverMessage:
        msg = await job.inbox.get()
        if isinstance(msg, DriverRestarted):
            raise msg
        if isinstance(msg, channel.TrainFailed):
            raise SyscallError(msg.errno, msg.message)
        return msg

    def _end(self, job: Job, state: str, error: str = "") -> None:
        r = job.record
        if state != "done" and job.device is not None:
            self.drivers.send(job.device, channel.TrainStop(job.id))
        self._release(job)
        r["state"], r["error"] = state, error[:2000]
        try:
            self.store.save(r)
            self.store.drop_checkpoints(job.id)
            self._forget_old(job.owner)
        except OSError as exc:
            log.warning("job.unsaved", job=job.id, error=str(exc))
        log.info("job.ended", job=job.id, state=state, step=r["step"], steps=r["steps"], loss=r.get("loss"),
                 error=error[:200])

    # -- turns on the device ---------------------------------------------------------------------

    def _queue_turn(self, job: Job, step: int) -> None:
        job.turn = TrainTurn(-next(self._rids), job.pid, job.device, job.id, step, next(self._seq))
        self.devices.queue_turn(job.turn)

    def admitted(self, turn: TrainTurn) -> None:
        """The turn got a slot in its device's window (kernel/devices.py pump). A slot is not a fair share (the
        job would step between every two engine steps), so while others' generations run there, the turn goes
        only if the job has had no more tokens than any of them (the cut-in rule), else it asks again soon."""
        if not self.devices.may_step(turn):
            asyncio.get_running_loop().call_later(RETRY_TURN_S, self._ask_again, turn)
            return
        self.drivers.send(turn.device, channel.TrainStep(turn.job, turn.step))

    def _ask_again(self, turn: TrainTurn) -> None:
        job = self.jobs.get(turn.job)
        if job is not None and job.turn is turn:      # not ended, cancelled or restarted meanwhile
            self.devices.queue_turn(turn)

    def _drop_turn(self, job: Job, tokens: int = 0) -> None:
        turn, job.turn = job.turn, None
        if turn is None:
            return
        self.devices.turn_over(turn, tokens)

    # -- what drivers say ------------------------------------------------------------------------

    def on_driver(self, device: str, msg: channel.DriverMessage) -> None:
        job = self.jobs.get(msg.job)
        if job is None or job.device != device or job.state in FINISHED:
            return
        if isinstance(msg, channel.TrainStepped):
            self.quotas.charge_tokens(job.owner, msg.tokens)
            self._drop_turn(job, msg.tokens)
        elif isinstance(msg, channel.TrainFailed):
            self._drop_turn(job)
        job.inbox.put_nowait(msg)

    def driver_down(self, device: str) -> None:
        """The device's driver died: its jobs lose their trainers and start again from their checkpoints."""
        for job in self.jobs.values():
            if job.device == device and job.state not in FINISHED:
                self._drop_turn(job)
                job.inbox.put_nowait(DriverRestarted())
