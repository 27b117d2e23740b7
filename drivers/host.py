"""The driver process: one per device, started and supervised by the kernel.

It owns the device's loaded models and their engines, and speaks a small private protocol
with the kernel over a DEALER socket (see specs/ABI.md, "Driver channel"). The loop polls
the socket, then advances every engine that has work by one step, and sends all the step's
token deltas in one message. A step pauses between layers: there the driver takes in new
submissions (a short cut-in prompt may run right away) and keeps the rest for the step's end. Model loads run on a thread, so a load never holds up requests
to models already loaded.

    python -m llmos.drivers.host --connect ipc://... --device cpu
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import sys
import threading
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import zmq  # noqa: E402

from llmos.specs.protocol import pack, unpack  # noqa: E402

from .interface import Driver  # noqa: E402


# Sequences per step, tokens per step, and prompt tokens that may cut into a step. A GPU step
# costs about the same at batch 256 as at 64, so it wants wide batches and big prefill chunks.
# On two CPU cores a 256-token step does the most tokens per second (512 is slower per token:
# the prefill attention grows faster than the matmuls), and a short interactive prompt cuts in.
ENGINE_SIZES = {"cpu": {"max_seqs": 64, "max_batch_tokens": 256, "cut_in_tokens": 64},
                "cuda": {"max_seqs": 256, "max_batch_tokens": 8192, "cut_in_tokens": 0}}


class TorchDriver(Driver):
    """Transformers models on torch, on one device (cpu or cuda:N)."""

    def __init__(self, device: str, dtype: str = "auto"):
        import torch

        from .loader import auto_dtype

        self.device = device
        self.kind = "cuda" if device.startswith("cuda") else "cpu"
        self.dtype = auto_dtype(device) if dtype == "auto" else dtype
        self.torch = torch
        self.engines: dict = {}        # model -> Engine (generate models)
        self.embedders: dict = {}      # model -> LoadedModel (embedding models)
        self.owner: dict[int, str] = {}  # rid -> model, for cancel

    def memory(self) -> dict:
        if self.device.startswith("cuda"):
            free, total = self.torch.cuda.mem_get_info(self.torch.device(self.device))
            return {"kind": "cuda", "total_bytes": int(total * 0.92), "free_bytes": int(free), "dtype": self.dtype}
        total = _meminfo("MemTotal")
        return {"kind": "cpu", "total_bytes": int(total * 0.75), "free_bytes": _meminfo("MemAvailable"),
                "dtype": self.dtype}

    def load(self, name: str, spec: dict, kv_bytes: int) -> dict:
        from .engine import Engine
        from .loader import load
        from llmos.specs.registry import ModelSpec

        started = time.monotonic()
        lm = load(ModelSpec(**spec), self.device, self.dtype)
        if lm.kind == "generate":
            self.engines[name] = Engine(lm, kv_budget_bytes=kv_bytes, **ENGINE_SIZES[self.kind])
        else:
            self.embedders[name] = lm
            kv_bytes = 0
        return {"bytes": lm.bytes, "kv_bytes": kv_bytes, "context_length": lm.context_length,
                "load_s": time.monotonic() - started, "kind": lm.kind}

    def unload(self, name: str) -> None:
        self.engines.pop(name, None)
        self.embedders.pop(name, None)
        if self.device.startswith("cuda"):
            self.torch.cuda.empty_cache()

    def submit(self, msg: dict) -> list | None:
        """Queue a generation; returns an error event if it cannot run."""
        from .engine import GenRequest
        from .loader import encode_prompt

        rid, model = msg["rid"], msg["model"]
        engine = self.engines.get(model)
        if engine is None:
            return [rid, "", 0, "error", None, ["EIO", f"model '{model}' is not loaded on {self.device}"]]
        try:
            ids = encode_prompt(engine.lm, msg.get("prompt"), msg.get("messages"))
        except ValueError as exc:
            return [rid, "", 0, "error", None, ["EINVAL", str(exc)]]
        ctx = engine.lm.context_length
        if len(ids) >= ctx:
            return [rid, "", 0, "error", None,
                    ["EINVAL", f"the prompt is {len(ids)} tokens; model '{model}' takes at most {ctx - 1}"]]
        engine.add(GenRequest(rid=rid, prompt_ids=ids, max_tokens=min(msg["max_tokens"], ctx - len(ids)),
                              temperature=msg["temperature"], top_p=msg["top_p"], top_k=msg["top_k"],
                              stop=msg["stop"], seed=msg["seed"], priority=msg.get("priority", 0),
                              cut_in=bool(msg.get("cut_in", False))))
        self.owner[rid] = model
        return None

    def cancel(self, rid: int) -> None:
        model = self.owner.pop(rid, None)
        if model in self.engines:
            self.engines[model].cancel(rid)

    def embed(self, msg: dict) -> dict:
        from .embedding import embed

        lm = self.embedders.get(msg["model"])
        if lm is None:
            raise LookupError(f"embedding model '{msg['model']}' is not loaded on {self.device}")
        vectors, tokens = embed(lm, msg["input"], msg["normalize"])
        return {"model": msg["model"], "dim": len(vectors[0]), "vectors": vectors, "usage": {"prompt_tokens": tokens}}

    def has_work(self) -> bool:
        return any(e.has_work() for e in self.engines.values())

    def step(self, pause=None) -> list:
        """One step of every busy engine; events as [rid, delta, tokens, finish, usage, error].

        pause(events), if given, is called between slices of each step with the events of
        any cut-in (often none): the moment to send them and to take in new submissions.
        """
        from .runner import run_to_end

        out = []
        for name, engine in list(self.engines.items()):
            if not engine.has_work():
                continue
            try:
                events = run_to_end(engine.step_slices(),
                                    lambda cut_in: (pause or out.extend)(self._wire(cut_in)))
            except Exception as exc:  # an engine bug fails its requests, not the driver
                traceback.print_exc()
                events = []
                for rid in [r for r, m in self.owner.items() if m == name]:
                    engine.cancel(rid)
                    out.append([rid, "", 0, "error", None, ["EIO", f"engine failure: {exc}"]])
            out += self._wire(events)
        return out

    def _wire(self, events: list) -> list:
        """Engine events as the driver channel carries them; ended requests are forgotten."""
        out = []
        for ev in events:
            if ev.finish is None:
                out.append([ev.rid, ev.delta, ev.tokens, None, None, None])
                continue
            self.owner.pop(ev.rid, None)
            if ev.finish == "cancelled":
                continue
            if ev.finish == "error":
                errno = "ENOMEM" if "KV" in ev.delta or "kv" in ev.delta else "EIO"
                out.append([ev.rid, "", ev.tokens, "error", None, [errno, ev.delta]])
            else:
                out.append([ev.rid, ev.delta, ev.tokens, ev.finish, ev.usage, None])
        return out


def _meminfo(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def serve(connect: str, device: str, dtype: str = "auto") -> None:
    # Ctrl-C reaches the whole process group; the kernel decides when drivers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, device.encode())
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(connect)
    driver = TorchDriver(device, dtype)
    sock.send(pack({"op": "hello", "device": device, "pid": os.getpid(), **driver.memory()}))
    loads: queue.Queue = queue.Queue()   # finished loads, from loader threads

    def load_in_thread(msg: dict) -> None:
        try:
            info = driver.load(msg["model"], msg["spec"], msg.get("kv_bytes", 0))
            loads.put({"op": "loaded", "model": msg["model"], **info})
        except Exception as exc:
            traceback.print_exc()
            loads.put({"op": "load_failed", "model": msg["model"], "message": f"{exc.__class__.__name__}: {exc}"})

    def receive() -> list[dict]:
        msgs = []
        while sock.get(zmq.EVENTS) & zmq.POLLIN:
            msgs.append(unpack(sock.recv()))
        return msgs

    def handle(msg: dict) -> bool:
        """Act on one message from the kernel; False once told to shut down."""
        op = msg.get("op")
        if op == "submit":
            err = driver.submit(msg)
            if err:
                sock.send(pack({"op": "events", "events": [err]}))
        elif op == "cancel":
            driver.cancel(msg["rid"])
        elif op == "embed":
            try:
                sock.send(pack({"op": "result", "rid": msg["rid"], "result": driver.embed(msg)}))
            except Exception as exc:
                sock.send(pack({"op": "error", "rid": msg["rid"], "errno": "EIO", "message": str(exc)}))
        elif op == "load":
            threading.Thread(target=load_in_thread, args=(msg,), daemon=True, name=f"load-{msg['model']}").start()
        elif op == "unload":
            driver.unload(msg["model"])
        elif op == "ping":
            sock.send(pack({"op": "pong", "t": msg.get("t")}))
        elif op == "shutdown":
            return False
        return True

    deferred: list[dict] = []   # arrived while a step was paused, and must wait for its end

    def pause(events: list) -> None:
        """Between slices of a step: send cut-in events, take in submissions and pings."""
        if events:
            sock.send(pack({"op": "events", "events": events}))
        for msg in receive():
            if msg.get("op") in ("submit", "ping"):
                handle(msg)
            else:
                deferred.append(msg)   # cancel, unload, ...: the step still uses what they free

    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while True:
        if os.getppid() != parent:
            return   # the kernel died without telling us: nothing left to serve
        pending, deferred[:] = deferred[:], []
        timeout = 0 if driver.has_work() or pending else 20
        if poller.poll(timeout):
            pending += receive()
        if not all(handle(msg) for msg in pending):
            sock.close()
            ctx.term()
            return
        while not loads.empty():
            sock.send(pack(loads.get()))
        if driver.has_work():
            events = driver.step(pause)
            if events:
                sock.send(pack({"op": "events", "events": events}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="llmos-driver", description=__doc__.splitlines()[0])
    p.add_argument("--connect", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16, or auto")
    args = p.parse_args(argv)
    try:
        serve(args.connect, args.device, args.dtype)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
