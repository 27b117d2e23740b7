"""Issue 18's attacks, replayed against a live kernel: for each, what a sound kernel does and what this one did.

Two ordinary users and a few more, added through the operator's console as `llmos user add`
adds them, on a CurveZMQ tcp kernel on loopback with the tiny random models (a generate model,
and an embedding model for the services). Each attack uses nothing but what a user's key allows,
and the table says whether the kernel held:

    python benchmarks/trust_attacks.py            # about a minute; exit status 1 if any attack got through

The tests in tests/security/ check each item on its own; this script is the attacker's view of
all of them at once, and its table goes into the closing note of the issue.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgpack
import zmq

from llmos.userland import Client, LLMOSError
from llmos.userland.gateway.testing import GatewayProcess
from llmos.userland.testing import (LLMOS_COMMAND, KernelProcess, curve_dealer, free_tcp_port, make_tiny_bert,
                                   make_tiny_llama)
from report import log, print_table

SECRET = "# Refunds\n\nThe refund override code is PELICAN-42. Refunds take five working days."


class Lab:
    """The kernel under attack, its operator's console, and the users' key files."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        llama, bert = make_tiny_llama(workdir / "llama"), make_tiny_bert(workdir / "bert")
        self.metrics_port = free_tcp_port()
        self.kernel = KernelProcess(workdir / "kernel", model=llama, tcp=True,
                                    extra=["--metrics", f"127.0.0.1:{self.metrics_port}"],
                                    env={"LLMOS_SERVICES_EMBED_MODEL": bert}).start()
        self.op = self.kernel.client("attack-console", caps=["admin", "ps", "mem", "svc", "devices"])
        assert wait(lambda: self.op.svc_list()["host"]["state"] == "up", 60), "the service host did not come up"
        self.keys: dict[str, str] = {}

    def user(self, name: str, **quotas) -> str:
        self.keys[name] = self.op.user_add(name, quotas=quotas or None)["key_file"]
        return self.keys[name]

    def client(self, who: str, program: str = "llmos-svc", **kw) -> Client:
        return Client(socket=self.kernel.socket, name=program, key=self.keys[who], timeout=10, **kw)

    def audit_lines(self) -> list[str]:
        return (self.kernel.state_dir / "audit.log").read_text().splitlines()

    def close(self) -> None:
        self.op.close()
        self.kernel.stop()


def wait(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def outcome(fn) -> str:
    """'ok' or the errno a call answered."""
    try:
        fn()
        return "ok"
    except LLMOSError as exc:
        return exc.errno


# -- the attacks: each returns (what was seen, whether the kernel held) ----------------------------------

def kb_of_another_user(lab: Lab):
    alice, bob = lab.client("alice"), lab.client("bob")
    alice.svc_call("kb", "ingest_texts", {"kb": "private", "docs": [{"name": "refunds.md", "text": SECRET}]})
    try:
        answer = bob.svc_call("kb", "ask", {"kb": "private", "question": "What is the refund override code?"})
        return f"bob read it: {answer['answer'][:40]!r}", False
    except LLMOSError as exc:
        dropped = outcome(lambda: bob.svc_call("kb", "drop", {"kb": "private"}))
        kept = alice.svc_call("kb", "list", {"kb": "private"})["chunks"] > 0
        return f"ask {exc.errno}, drop {dropped}, alice's kb kept: {kept}", exc.errno == "ENOENT" and kept
    finally:
        alice.close()
        bob.close()


def old_key_after_rotate(lab: Lab):
    old = Raw(lab, "alice")            # a connection made with alice's key, before the rotation
    old.ask("hello", name="before-rotate")
    lab.op.user_rotate("alice")
    seen = {call: old.ask(call, **args) for call, args in (("ping", {}), ("sysinfo", {}), ("hello", {"name": "again"}))}
    old.close()
    answered = [call for call, reply in seen.items() if reply.get("ok")]
    return ("answered: " + ", ".join(answered)) if answered else "every frame EPERM", not answered


def old_connection_after_remove_and_add(lab: Lab):
    lab.user("mallory")
    old = Raw(lab, "mallory")
    old.ask("hello", name="before-remove")
    lab.op.user_remove("mallory")
    lab.user("mallory")                # the same name again, a new key
    seen = {call: old.ask(call) for call in ("ping", "sysinfo")}
    old.close()
    lab.op.user_remove("mallory")
    answered = [call for call, reply in seen.items() if reply.get("ok")]
    return ("answered: " + ", ".join(answered)) if answered else "every frame EPERM", not answered


def audit_flood(lab: Lab):
    before = len(lab.audit_lines())
    error = outcome(lambda: lab.client("bob", caps=[f"cap{i:07d}" for i in range(200_000)]))
    for _ in range(300):
        outcome(lambda: lab.client("bob", caps=["admin"]).close())
    added = lab.audit_lines()[before:]
    longest = max(len(line.encode()) for line in added)
    return (f"hello {error}; 301 denials wrote {len(added)} lines, the longest {longest} bytes",
            longest <= 4096 and len(added) <= 20)


def kb_ingest_past_the_quota(lab: Lab):
    carol = lab.client("carol")
    big = "\n\n".join(f"Paragraph {i}: " + "refunds are processed by the billing team. " * 6 for i in range(20))
    try:
        got = outcome(lambda: carol.svc_call("kb", "ingest_texts", {"kb": "big", "docs": [{"name": "b.md", "text": big}]}))
    finally:
        carol.close()
    return f"ingest of {len(big)} chars with a 1500-byte quota: {got}", got == "EDQUOT"


def alloc_all_device_memory(lab: Lab):
    dave = lab.client("dave", program="greedy")
    total = next(d for d in dave.devices() if d["name"] == "cpu")["total_bytes"]
    got = outcome(lambda: dave.alloc_gpu(total // 2, device="cpu"))
    dave.close()
    return f"a new user's alloc_gpu of half the device: {got}", got in ("EDQUOT", "ENOMEM")


def tokens_past_the_rate(lab: Lab):
    erin = lab.client("erin", program="chatty")
    before = erin.stats()["tokens"]["generated"]
    got = outcome(lambda: erin.infer(prompt="Tell me a story", max_tokens=918, temperature=0.0))
    generated = erin.stats()["tokens"]["generated"] - before
    erin.close()
    return f"quota 200/min, asked 918: {got} after {generated} tokens", got == "EDQUOT" and generated <= 264


def stats_of_other_tenants(lab: Lab):
    alice, bob = lab.client("alice", program="busy"), lab.client("bob", program="nosy")
    seen_before = bob.stats()["requests"]["by_syscall"].get("memread", {}).get("ok", 0)
    for i in range(20):
        alice.memwrite("notes", f"k{i}", "v")
        alice.memread("notes", f"k{i}")
    seen_after = bob.stats()["requests"]["by_syscall"].get("memread", {}).get("ok", 0)
    alice.close()
    bob.close()
    return f"alice's 20 memreads moved bob's count by {seen_after - seen_before}", seen_after == seen_before


def slow_metrics_clients(lab: Lab):
    socks = slowloris("127.0.0.1", lab.metrics_port, 64)
    try:
        started = time.monotonic()
        status = httpx.get(f"http://127.0.0.1:{lab.metrics_port}/health/live", timeout=10).status_code
        took = time.monotonic() - started
    except httpx.HTTPError as exc:
        status, took = type(exc).__name__, None
    finally:
        for s in socks:
            s.close()
    return f"/health/live beside 64 slow clients: {status} in {took if took is None else round(took, 2)} s", \
        status == 200 and took is not None and took < 2


def slow_gateway_clients(lab: Lab):
    with GatewayProcess(lab.kernel.cli_env()) as gw:
        socks = slowloris("127.0.0.1", gw.port, 200)
        try:
            served = httpx.get(gw.url + "/health/live", timeout=10).status_code
            started = time.monotonic()
            wait(lambda: all(_closed(s) for s in socks), 30)
            took, held = time.monotonic() - started, sum(not _closed(s) for s in socks)
        finally:
            for s in socks:
                s.close()
    return f"200 slow clients: {200 - held} cut within {took:.1f} s, {held} held; a normal request {served}", \
        held == 0 and served == 200


def slowloris(host: str, port: int, n: int) -> list[socket.socket]:
    """n connections that send half a request and then nothing."""
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        socks.append(s)
    return socks


def _closed(s: socket.socket) -> bool:
    """Whether the server closed the connection (what it sent before, a 408, is read and dropped)."""
    s.setblocking(False)
    try:
        while s.recv(1 << 16):
            pass
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def routing_ids_chosen_by_peers(lab: Lab):
    """A peer choosing its routing id: its own, a zero-led one like libzmq's, and the ids an unseeded libzmq
    would hand out next (claiming the next one made libzmq abort the kernel)."""
    claims = [b"victim-conn"] + [b"\x00" + (value + k & 0xFFFFFFFF).to_bytes(4, "big")
                                 for value in unseeded_zmq_ids(8) for k in range(2)]
    raws = [Raw(lab, "bob", routing_id) for routing_id in claims]
    answered = sum(raw.ask("ping").get("ok", False) for raw in raws[:1])     # its own choice: cut unanswered
    for raw in raws[1:]:
        raw.send("ping")
    time.sleep(2)
    for raw in raws:
        raw.close()
    alive = lab.kernel.proc.poll() is None
    alive = alive and outcome(lambda: lab.client("alice", program="after").close()) == "ok"
    return f"chosen id answered: {bool(answered)}; kernel alive and serving after 16 predicted ids: {alive}", \
        alive and not answered


def unseeded_zmq_ids(count: int) -> list[int]:
    """The first values libzmq numbers a ROUTER's peers from when nobody seeded libc's rand()."""
    import ctypes
    libc = ctypes.CDLL(None)
    libc.srand(1)
    values = [(libc.rand() | (libc.rand() << 31)) & 0xFFFFFFFF for _ in range(count)]
    libc.srand(int.from_bytes(os.urandom(4), "big") >> 1)
    return values


def unread_across_connections(lab: Lab):
    """64 connections of bob's that never read, each sent 2,000 small replies (pings of 3,900 bytes, under
    the size that used to be counted): what the kernel holds for him must stay within his bounds, which
    add up to 256 MiB of replies, 128 MiB of requests and 1.2 MiB of receive buffers a connection."""
    import psutil
    from llmos.specs.protocol import INBOUND_HELD_PER_PRINCIPAL, RECV_HELD_PER_CONNECTION, UNREAD_BYTES_PER_PRINCIPAL
    bound = (UNREAD_BYTES_PER_PRINCIPAL + INBOUND_HELD_PER_PRINCIPAL + 64 * RECV_HELD_PER_CONNECTION) >> 20
    kernel = psutil.Process(lab.kernel.proc.pid)
    before = peak = kernel.memory_info().rss
    raws = [Raw(lab, "bob", never_reads=True) for _ in range(64)]
    payload = b"x" * 3900
    for raw in raws:
        for _ in range(2000):
            raw.send("ping", payload=payload)
        peak = max(peak, kernel.memory_info().rss)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        peak = max(peak, kernel.memory_info().rss)
        time.sleep(0.1)
    for raw in raws:
        raw.close()
    grew = (peak - before) >> 20
    return f"500 MB of replies asked for: the kernel grew {grew} MiB at its peak (bound {bound} MiB)", grew < bound


def audit_cuts(state_dir: Path):
    """After the kernel stopped: a copy of its state with the log's last lines cut, and one with its first."""
    seen = []
    for where in ("tail", "head"):
        copy = Path(tempfile.mkdtemp(prefix="llmos-audit-cut-"))
        try:
            shutil.copytree(state_dir, copy / "state")
            log_file = copy / "state" / "audit.log"
            lines = log_file.read_text().splitlines(keepends=True)
            log_file.write_text("".join(lines[:-3] if where == "tail" else lines[3:]))
            r = subprocess.run([*LLMOS_COMMAND, "audit", "--verify", "--state-dir", str(copy / "state")],
                               capture_output=True, text=True, timeout=60)
            seen.append((where, r.returncode))
        finally:
            shutil.rmtree(copy, ignore_errors=True)
    return ", ".join(f"{w} cut: verify exit {code}" for w, code in seen), all(code != 0 for _, code in seen)


class Raw:
    """A bare CurveZMQ DEALER with a user's key, which keeps sending whatever it is told (the client
    library gives up at the first refusal; an attacker does not)."""

    def __init__(self, lab: Lab, who: str, routing_id: bytes | None = None, never_reads: bool = False):
        self.ctx = zmq.Context()
        never_reading = {"RCVHWM": 1, "RCVBUF": 4096} if never_reads else {}   # takes almost nothing off its socket
        self.sock = curve_dealer(self.ctx, lab.kernel.socket, lab.keys[who], routing_id, **never_reading)
        self.next_id = 0

    def send(self, call: str, **args) -> None:
        self.next_id += 1
        self.sock.send(msgpack.packb({"v": 1, "id": self.next_id, "call": call, "args": args}))

    def ask(self, call: str, **args) -> dict:
        self.send(call, **args)
        while self.sock.poll(5000):
            reply = msgpack.unpackb(self.sock.recv(), raw=False)
            if reply.get("id") == self.next_id:
                return reply
        return {"ok": False, "error": {"errno": "no answer"}}

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


ATTACKS = [
    ("1", "bob asks and drops alice's kb 'private' (both run llmos-svc)", "ENOENT; alice's kb kept", kb_of_another_user),
    ("2", "a connection of alice's old key, after user rotate alice", "every frame refused", old_key_after_rotate),
    ("2", "a connection of mallory's, after user rm and add mallory", "every frame refused",
     old_connection_after_remove_and_add),
    ("3", "a hello asking for 200,000 caps, then 300 denied hellos", "lines <= 4 KiB, a few lines + summary",
     audit_flood),
    ("6", "routing ids a peer chose: its own, and the ones the kernel gives next", "cut unanswered; kernel lives",
     routing_ids_chosen_by_peers),
    ("9", "64 connections of one user that never read", "within its bounds (459 MiB)",
     unread_across_connections),
    ("5", "kb ingest past the caller's mem_bytes quota", "EDQUOT (the caller's)", kb_ingest_past_the_quota),
    ("7", "a new user reserves half the device's memory", "EDQUOT (default share 25%)", alloc_all_device_memory),
    ("8", "one request past tokens_per_minute 200", "EDQUOT near 200 tokens", tokens_past_the_rate),
    ("10", "64 slow clients on the metrics port", "/health/live in < 2 s", slow_metrics_clients),
    ("10", "200 slowloris clients on the gateway", "all cut; others served", slow_gateway_clients),
    ("11", "bob's stats while alice calls", "alice's calls unseen", stats_of_other_tenants),
]


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="llmos-attacks-"))
    rows, lab = [], None
    try:
        log("booting a tcp kernel with the tiny models and services")
        lab = Lab(workdir)
        for name in ("alice", "bob"):
            lab.user(name)
        lab.user("carol", mem_bytes=1500)
        lab.user("dave")
        lab.user("erin", tokens_per_minute=200)
        for item, attack, expected, fn in ATTACKS:
            log(f"item {item}: {attack}")
            try:
                seen, held = fn(lab)
            except Exception as exc:     # an attack that could not be run is reported, not hidden
                seen, held = f"could not run: {type(exc).__name__}: {str(exc)[:80]}", False
            rows.append([item, attack, expected, seen, "held" if held else "BROKEN"])
        lab.close()
        lab = None
        log("item 4: cutting the stopped kernel's audit log")
        seen, held = audit_cuts(workdir / "kernel" / "state")
        rows.append(["4", "the audit log cut at its tail, then at its head", "verify fails", seen,
                     "held" if held else "BROKEN"])
    finally:
        if lab is not None:
            lab.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print_table("Issue 18's attacks against a live kernel", ["item", "attack", "expected", "seen", "verdict"], rows,
                [f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
                 f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"])
    return 0 if all(r[-1] == "held" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
