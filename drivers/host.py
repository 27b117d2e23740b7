"""The driver process: one per device, started and supervised by the kernel.

It owns the device's loaded models and their engines, and speaks the typed driver channel
(specs/channel.py) with the kernel over a DEALER socket. The loop polls the socket, then
advances every engine that has work by one step, and sends all the step's token events in one
message (while steps come faster than anyone reads, a few steps' together: outbox.py). A step
pauses between layers: there the driver takes in new submissions (a short cut-in prompt may run
right away) and keeps the rest for the step's end. Model loads run on a
thread, so a load never holds up requests to models already loaded.

No computation holds the loop past the kernel's heartbeat (a ping unanswered for two periods
is a crash: kernel/supervisor.py), and none holds up other tenants' generations for its whole
length. An embed or a score is a call in progress: a generator of slices (embedding.py,
scoring.py); each turn of the loop runs one slice of the oldest call (then it goes to the back of
the line) and one engine step, so a minute of embedding and a stream share the device turn by
turn. A slice is bounded in tokens, and while others wait in time (`_slice_s`): about as long as
the engines' recent steps, sized from the rate of the call's own slices before it. Turns of equal
length: a stream beside the heaviest call waits about twice its quiet time between two tokens
(issue 25's goal is 3x), on a quiet machine or a loaded one, as far as the least slice allows (a
layer of one text; a score's LEAST_TOKENS positions). Within a slice, and within a training step
(trainer.py), a long forward pauses after its layers (slices.pausing) to take in pings and
submissions; an embed's forward also runs an engine step there (one text of an encoder
is the least a forward takes, and may be longer than a slice should be), a score's does not (its
model is the engine's own: the step would run inside the score's adapter and forward hooks, and a
score cuts a long row into chunks of positions instead). An engine step pauses after each layer
anyway, and bounds its prefill in tokens (engine.py), not in time: the streams decoding in a step
with 256 prompt tokens of SmolLM2-135M on a CPU wait ~300 ms for it, not ~40 (a tiny model's: a
few ms); a bound in time there would delay that prompt's own first token, a trade left to a
change measured on real models.

Why not answer pings from a thread of their own: the ping is the kernel's only sign that this
loop still moves. A thread would answer for a loop stuck in a kernel bug or a hung device just
as well, and the watchdog would then need a second signal of progress; with slices, an answer
means progress, and a stuck driver is still caught and restarted.

    python -m llmos.drivers.host --connect ipc://... --device cpu
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import statistics
import sys
import threading
import time
import traceback
from collections import deque

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import zmq  # noqa: E402

from llmos.specs import channel  # noqa: E402
from llmos.specs.channel import ChannelError, DriverMessage  # noqa: E402

from .interface import Driver  # noqa: E402
from .outbox import Outbox  # noqa: E402
from .slices import ALONE_SLICE_S, MIN_SLICE_S, SLICE_TARGET_S  # noqa: E402
from .trainer import Training  # noqa: E402

IDLE_POLL_MS = 20
MID_STEP = (channel.Submit, channel.Ping)   # what a paused step takes in; the rest waits for its end


class DriverLoop:
    """The driver's side of the channel: messages in, engine steps, events out."""

    def __init__(self, sock: zmq.Socket, driver: Driver):
        self.sock = sock
        self.driver = driver
        self.loads: queue.Queue = queue.Queue()   # finished loads, from loader threads
        self.deferred: list[DriverMessage] = []   # arrived while a step was paused
        self.loading: dict[str, list[channel.Submit]] = {}   # model being loaded -> submits waiting for it
        self.load_lock = threading.Lock()
        self.calls: deque = deque()     # embeds and scores in progress: (rid, what, their slices)
        self.step_times: deque = deque([0.0], maxlen=8)   # seconds of the engines' last steps
        self.outbox = Outbox()          # steps' events, held while steps are faster than a stream needs
        self.handlers = {channel.Submit: self._submit, channel.Cancel: self._cancel,
                         channel.Embed: self._embed, channel.Score: self._score, channel.Load: self._load,
                         channel.Unload: lambda m: driver.unload(m.model),
                         channel.LoadAdapter: lambda m: self.send(driver.load_adapter(m)),
                         channel.UnloadAdapter: driver.unload_adapter,
                         channel.Ping: lambda m: self.send(channel.Pong(m.t))}
        self.training = Training(getattr(driver, "engines", {}), self.send, lambda: self.pause([]))  # LoRA jobs
        self.handlers.update({channel.TrainStart: self.training.start, channel.TrainStep: self.training.step,
                              channel.TrainStop: self.training.stop})

    def send(self, msg: DriverMessage) -> None:
        self.sock.send(channel.encode(msg))

    def receive(self) -> list[DriverMessage]:
        msgs = []
        while self.sock.get(zmq.EVENTS) & zmq.POLLIN:
            try:
                msgs.append(channel.decode(self.sock.recv(), DriverMessage))
            except ChannelError as exc:
                print(f"driver: dropped a bad channel message: {exc}", file=sys.stderr)
        return msgs

    def handle(self, msg: DriverMessage) -> bool:
        """Act on one message from the kernel; False once told to shut down."""
        if isinstance(msg, channel.Shutdown):
            return False
        handler = self.handlers.get(type(msg))
        if handler is not None:
            handler(msg)
        return True

    def _submit(self, msg: channel.Submit) -> None:
        if msg.model in self.loading:      # a restarted driver reloads while the kernel re-admits
            self.loading[msg.model].append(msg)
            return
        failed = self.driver.submit(msg)
        if failed is not None:
            self.send(channel.Events([failed]))

    def _cancel(self, msg: channel.Cancel) -> None:
        for waiting in self.loading.values():
            waiting[:] = [m for m in waiting if m.rid != msg.rid]
        for call in [c for c in self.calls if c[0] == msg.rid]:
            self.calls.remove(call)
            call[2].close()
        self.driver.cancel(msg.rid)
        self.outbox.drop(msg.rid)

    def _load_ended(self, msg: channel.Loaded | channel.LoadFailed) -> None:
        """Send a finished load on, then the submits that waited for it (they fail with it)."""
        self.send(msg)
        for waiting in self.loading.pop(msg.model, []):
            if isinstance(msg, channel.Loaded):
                self._submit(waiting)
            else:
                self.send(channel.Events([channel.TokenEvent.failed(waiting.rid, "EIO", f"loading {msg.model} failed")]))

    def _embed(self, msg: channel.Embed) -> None:
        slices = self.driver.embed_slices(msg, self._step_in_call, self._slice_s)
        self.calls.append((msg.rid, "embedding", slices))

    def _score(self, msg: channel.Score) -> None:
        slices = self.driver.score_slices(msg, self._pause_in_call, self._slice_s)
        self.calls.append((msg.rid, "scoring", slices))

    def _advance_call(self) -> None:
        """One slice of the oldest call in progress, which then waits behind the others; its reply
        when it ends. A call that raises fails alone, never the driver."""
        rid, what, slices = call = self.calls.popleft()
        try:
            next(slices)
        except StopIteration as end:
            self.send(end.value)
        except Exception as exc:
            traceback.print_exc()
            self.send(channel.Error(rid, "EIO", f"{what} failed: {exc.__class__.__name__}: {str(exc)[:500]}"))
        else:
            self.calls.append(call)

    def _pause_in_call(self) -> None:
        self.pause([])

    def _step_in_call(self) -> None:
        """Within an embed's forward (its model is no engine's): take in pings and submissions, and
        step the engines, so the streams beside one long text keep going."""
        self.pause([])
        self._step()

    def _slice_s(self) -> float:
        """How long the next slice of the call whose turn it is (it is off the line) may last: while
        generations wait, as long as the engines' steps lately (their median: one step the OS held up
        says little; at least MIN_SLICE_S); while only other calls wait, SLICE_TARGET_S; while nobody
        waits, ALONE_SLICE_S (someone may come)."""
        if self.driver.has_work():
            return max(MIN_SLICE_S, statistics.median(self.step_times))
        return SLICE_TARGET_S if self.calls else ALONE_SLICE_S

    def _step(self) -> None:
        """One step of every busy engine; its events."""
        if self.driver.has_work():
            started = time.monotonic()
            self.outbox.add(self.driver.step(self.pause))
            self.step_times.append(time.monotonic() - started)
        events = self.outbox.take(self.driver.has_work())
        if events:
            self.send(channel.Events(events, self.driver.kv_usage()))

    def _load(self, msg: channel.Load) -> None:
        self.loading.setdefault(msg.model, [])
        threading.Thread(target=self._load_in_thread, args=(msg,), daemon=True, name=f"load-{msg.model}").start()

    def _load_in_thread(self, msg: channel.Load) -> None:
        """One load at a time: transformers' from_pretrained in two threads of a process at once fails
        ("Cannot copy out of meta tensor"), e.g. a restarted driver reloading two models."""
        try:
            with self.load_lock:
                self.loads.put(self.driver.load(msg, lambda stage: self.loads.put(channel.LoadProgress(msg.model, stage))))
        except Exception as exc:
            traceback.print_exc()
            self.loads.put(channel.LoadFailed(msg.model, f"{exc.__class__.__name__}: {exc}"))

    def pause(self, events: list) -> None:
        """Between slices of a step: send cut-in events, take in submissions and pings."""
        if events:
            self.send(channel.Events(events))
        held = self.outbox.take(more_work=True)    # a long step does not hold earlier steps' tokens past their time
        if held:
            self.send(channel.Events(held))
        for msg in self.receive():
            if isinstance(msg, MID_STEP):
                self.handle(msg)
            else:
                self.deferred.append(msg)   # cancel, unload, ...: the step still uses what they free

    def run(self, parent_pid: int) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while os.getppid() == parent_pid:   # else the kernel died without telling us: nothing to serve
            pending, self.deferred = self.deferred, []
            if poller.poll(0 if self.driver.has_work() or self.calls or pending else IDLE_POLL_MS):
                pending += self.receive()
            if not all(self.handle(msg) for msg in pending):
                return
            while not self.loads.empty():
                done = self.loads.get()
                if isinstance(done, (channel.Loaded, channel.LoadFailed)):
                    self._load_ended(done)
                else:
                    self.send(done)
            if self.calls:
                self._advance_call()
            self.driver.tune_threads()
            self._step()


def serve(connect: str, device: str, dtype: str = "auto", parent: int | None = None,
          curve: tuple[str, str, str] | None = None, local_device: str | None = None) -> None:
    """parent: the kernel's pid, given by the kernel itself; a driver whose kernel died before it
    could ask would otherwise take init for its parent and serve nobody forever.
    curve: (public, secret, kernel's public) keys, z85, for a tcp connect (a driver on a Ray node).
    local_device: the device as this machine names it, if not as the kernel does (Ray shows an
    actor its one GPU as cuda:0, whatever the kernel calls it)."""
    from .torch_driver import DeviceUnavailable, TorchDriver

    if threading.current_thread() is threading.main_thread():
        # Ctrl-C reaches the whole process group; the kernel decides when drivers stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = parent or os.getppid()
    if os.getppid() != parent:
        return
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, device.encode())
    sock.setsockopt(zmq.LINGER, 2000)
    if curve is not None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = (k.encode() for k in curve)
    sock.connect(connect)
    try:
        try:
            driver = TorchDriver(local_device or device, dtype)
            hello = driver.hello()
        except Exception as exc:   # the device cannot work: say why once, rather than crash in a loop
            if not isinstance(exc, DeviceUnavailable):    # that one's message says it all; others may be bugs
                traceback.print_exc()
            why = str(exc) if isinstance(exc, DeviceUnavailable) else f"{exc.__class__.__name__}: {exc}"
            sock.send(channel.encode(channel.DriverFailed(device, why)))
            _wait_for_kernel(sock, parent)
            return
        loop = DriverLoop(sock, driver)
        loop.send(hello)
        loop.run(parent)
    finally:
        sock.close()
        ctx.term()


def _wait_for_kernel(sock: zmq.Socket, parent: int) -> None:
    """After DriverFailed: stay until the kernel answers (it stops us), so it reads the reason
    before it sees the exit, which it would count as a crash."""
    while os.getppid() == parent and not sock.poll(1000):
        pass


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="llmos-driver", description=__doc__.splitlines()[0])
    p.add_argument("--connect", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16, or auto")
    p.add_argument("--parent", type=int, help="the kernel's pid: the driver ends when it is gone")
    args = p.parse_args(argv)
    try:
        serve(args.connect, args.device, args.dtype, args.parent)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
