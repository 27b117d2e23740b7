"""Every argument at and past each edge its declaration gives it, sent to a live kernel by an ordinary
user while another user's generation streams (issue 25, item 1).

The values come from the declarations themselves: specs/syscalls.toml, and each built-in service
task's args (edge_values.edges). A value the declaration allows is answered ok or with an errno
other than EIO; one past an edge, or of a wrong type, is EINVAL naming the argument; every answer
comes within a minute; and meanwhile a canary (another principal's stream of the tiny model,
temperature 0, a fixed seed) keeps writing the text of a quiet run. The fuzzing of frames and
argument maps at random is test_fuzz.py's.

The attacker holds no admin: the admin calls (shutdown, kill, svc_reload, the user calls) check
their arguments before the capability, so values past an edge reach the validator, and the ones
inside are EPERM, never carried out. exit takes no argument and is never sent; each hello is the
first call of a connection of its own.
"""

from __future__ import annotations

import threading

import pytest

from edge_values import RawCaller, edges, shown
from harness import KernelProcess, wait_until
from llmos.kernel.syscalls.inference import MAX_MESSAGE_CHARS
from llmos.services import plugins
from llmos.specs import ERRNOS, SYSCALLS

def _short_wav() -> bytes:
    """A tenth of a second of silence, 16 kHz mono 16-bit: the cheapest audio voice takes."""
    import io
    import wave
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * 1600)
    return out.getvalue()


CANARY = {"prompt": "Once upon a time", "max_tokens": 48, "temperature": 0.0, "seed": 7}
ATTACKER_CAPS = ["ps", "devices", "models", "load", "infer", "embed", "mem", "alloc", "svc", "tune"]
CALL_TIMEOUT_S = 150.0   # a liveness bound, not a speed one: alone the heaviest legal calls (1024 texts to embed,
                         # max_tokens=32768) answer in under 8 s, but beside the suite's busy loops on a 2-core
                         # AVX2 machine they once took more than 60

# Arguments that make each call well-formed and cheap; an edge value replaces one at a time.
BASE = {
    "hello": {"name": "edges"},
    "kill": {"pid": 2**62}, "free": {"handle": 2**62}, "cancel": {"id": 2**62},
    "alloc_gpu": {"bytes": 1, "device": "cpu"},
    "load_model": {"name": "no-such-model"}, "unload_model": {"name": "no-such-model"},
    "infer": {"prompt": "hi", "max_tokens": 2},
    "embed": {"input": "x", "model": "tiny-bert"},
    "memwrite": {"region": "edges", "key": "k", "value": "v"},
    "memread": {"region": "edges", "key": "k"}, "memdel": {"region": "scratch", "key": "no-such-key"},
    "memsearch": {"region": "edges", "query": "q", "model": "tiny-bert"},
    "svc_call": {"service": "redact", "task": "text", "args": {"text": "mail a@b.com"}},
    "user_add": {"name": "edge-user"}, "user_remove": {"name": "edge-user"}, "user_rotate": {"name": "edge-user"},
    "score": {"texts": "hello there"},
    "adapter_share": {"model": "tiny:none", "shared": False},
    "tune": {"base": "no-such-base", "name": "edges", "examples": [{"prompt": "a", "completion": "b"}]},
    "job_cancel": {"job": "no-such-job"},
    "summarize.text": {"text": "The cat sat. The dog ran. Birds fly south in winter."},
    "classify.labels": {"text": "I love it", "labels": ["good", "bad"]},
    "classify.sentiment": {"text": "I love it"},
    "translate.text": {"text": "the cat is on the table", "source": "en", "target": "en"},
    "translate.languages": {}, "translate.detect": {"text": "the cat is on the table"},
    "redact.text": {"text": "mail me at a@b.com"}, "moderate.text": {"text": "hello there"},
    "kb.ingest": {"kb": "edges", "text": "Refunds take five days."},
    "kb.ingest_texts": {"kb": "edges", "docs": [{"name": "a.md", "text": "Refunds take five days."}]},
    "kb.ask": {"kb": "edges", "question": "How long do refunds take?"},
    "kb.search": {"kb": "edges", "query": "refunds"}, "kb.list": {"kb": "edges"}, "kb.drop": {"kb": "no-such-kb"},
    "support.chat": {"conversation": "edges", "message": "hi", "kb": "edges"},
    "support.status": {"conversation": "no-such"}, "support.resolve": {"conversation": "no-such"},
    "support.end": {"conversation": "no-such"},
    "voice.transcribe": {"audio": _short_wav()}, "voice.speak": {"text": "hi"},
    "voice.ask": {"audio": _short_wav(), "kb": "edges"},
}
# Arguments that exclude another: the edge of the first is sent without the second.
EXCLUDES = {("infer", "messages"): "prompt", ("kb.ingest", "path"): "text"}
# What a list holds, where "x" would not do.
ITEMS = {"messages": {"role": "user", "content": "hi"}, "examples": {"prompt": "a", "completion": "b"},
         "caps": "ps", "target_modules": "q_proj", "docs": {"name": "a.md", "text": "b"}, "labels": "good"}
# Edges inside a list's items, which the syscall checks itself: (call, argument, value), all past an edge.
NESTED = [("infer", "messages", [{"role": "user", "content": "x" * (MAX_MESSAGE_CHARS + 1)}]),
          ("infer", "messages", [{"role": "user", "content": "x" * (MAX_MESSAGE_CHARS // 2 + 1)}] * 2)]

TASKS = {f"{s.name}.{t.name}": t.schema for s in plugins.load({"LLMOS_PLUGINS": ""}).services.values()
         for t in s.tasks.values()}
SYSCALLS_WITH_ARGS = sorted(name for name, s in SYSCALLS.items() if s.args)


@pytest.fixture(scope="module")
def edge_kernel(tmp_path_factory, tiny_llama, tiny_bert):
    work = tmp_path_factory.mktemp("edges")
    (work / "config.toml").write_text(f'[models.tiny-bert]\npath = "{tiny_bert}"\n')
    k = KernelProcess(work, model=tiny_llama, tcp=True, extra=["--config", str(work / "config.toml")],
                      env={"LLMOS_SERVICES_EMBED_MODEL": tiny_bert, "LLMOS_PLUGINS": ""}).start()
    with k.client("console", caps=["admin", "ps", "svc"]) as op:
        keys = {"mallory": op.user_add("mallory", caps=ATTACKER_CAPS)["key_file"],
                "victim": op.user_add("victim")["key_file"]}
        assert wait_until(lambda: op.svc_list()["host"]["state"] == "up", timeout=60)
    yield k, keys
    k.stop()


@pytest.fixture(scope="module")
def quiet_text(edge_kernel):
    k, keys = edge_kernel
    with k.client("canary", key=keys["victim"]) as c:
        return c.infer(**CANARY)["text"]


@pytest.fixture(scope="module")
def mallory(edge_kernel):
    """The attacker's process, with something of its own to read and search (a region, a kb)."""
    k, keys = edge_kernel
    caller = RawCaller(k.socket, keys["mallory"])
    for call, args in [("hello", {"name": "mallory", "caps": ATTACKER_CAPS}),
                       ("memwrite", {**BASE["memwrite"], "embed": True, "model": "tiny-bert"}),
                       ("svc_call", {"service": "kb", "task": "ingest_texts", "args": BASE["kb.ingest_texts"]})]:
        assert caller.call(call, args)["ok"], call
    yield caller
    caller.close()


class Canary:
    """The victim's streams, one after another on a thread, until stop(); what each one wrote."""

    def __init__(self, kernel: KernelProcess, key: str):
        self.kernel, self.key, self.texts, self.errors = kernel, key, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        with self.kernel.client("canary", key=self.key) as c:
            while not self._stop.is_set() or not self.texts:
                try:
                    stream = c.stream(**CANARY)
                    deltas = "".join(stream)
                    self.texts.append(deltas if deltas == stream.result["text"] else f"{deltas!r} != result")
                except Exception as exc:                # what the victim would see: recorded, judged after
                    self.errors.append(repr(exc))
                    return

    def stop(self) -> tuple[list[str], list[str]]:
        self._stop.set()
        self._thread.join(120)
        assert not self._thread.is_alive(), "the canary's stream hung"
        return self.texts, self.errors


def judged(caller: RawCaller, call: str, args: dict, field: str, value, inside: bool) -> str | None:
    """What is wrong with the answer to one edge; None when it is as the declaration says."""
    try:
        if call == "hello":           # on a connection of its own: a process says hello once
            first = RawCaller(caller.socket, caller.key_file)
            try:
                reply = first.call(call, args, CALL_TIMEOUT_S)
            finally:
                first.close()
        else:
            reply = caller.call(call, args, CALL_TIMEOUT_S)
    except TimeoutError as exc:
        return f"{field}={shown(value)}: {exc}"
    error = reply.get("error") or {}
    if not inside:
        if reply.get("ok") or error.get("errno") != "EINVAL" or f"'{field}'" not in error.get("message", ""):
            return f"{field}={shown(value)} (past an edge): {reply.get('error') or 'ok'}"
    elif not reply.get("ok") and (error.get("errno") not in ERRNOS or error.get("errno") == "EIO"):
        return f"{field}={shown(value)} (inside): {error}"
    return None


def attack(k: KernelProcess, keys: dict, quiet: str, sends) -> None:
    """Run every (call, args, field, value, inside) of sends beside the canary; fail with all that went wrong."""
    canary = Canary(k, keys["victim"])
    wrong = [w for w in (judged(mallory_, *send) for mallory_, *send in sends) if w]
    texts, errors = canary.stop()
    wrong += [f"the canary: {e}" for e in errors] + [f"the canary wrote {t!r}" for t in set(texts) - {quiet}]
    assert not wrong, "\n".join(wrong)


def sends_for(caller: RawCaller, call: str, base_key: str, schema_args: dict, wrap=None):
    """(caller, call, args, field, value, inside) for each edge of each argument; wrap(args) makes a
    service task's args into svc_call's."""
    for field, arg in schema_args.items():
        for value, inside in edges(arg, ITEMS.get(field)):
            args = {**BASE.get(base_key, {}), field: value}
            args.pop(EXCLUDES.get((base_key, field)), None)
            yield caller, call, wrap(args) if wrap else args, field, value, inside


@pytest.mark.parametrize("call", SYSCALLS_WITH_ARGS)
def test_every_argument_of_a_syscall_at_and_past_its_edges_is_ok_or_einval_and_the_canary_is_untouched(
        edge_kernel, quiet_text, mallory, call):
    k, keys = edge_kernel
    sends = list(sends_for(mallory, call, call, SYSCALLS[call].args))
    sends += [(mallory, c, {**BASE[c], a: v, "prompt": None}, a, v, False) for c, a, v in NESTED if c == call]
    attack(k, keys, quiet_text, sends)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_argument_of_a_builtin_task_at_and_past_its_edges_is_ok_or_einval_and_the_canary_is_untouched(
        edge_kernel, quiet_text, mallory, task):
    k, keys = edge_kernel
    service, name = task.split(".")
    assert task in BASE, f"add {task}'s cheapest well-formed args to BASE"
    wrap = lambda args: {"service": service, "task": name, "args": args}     # noqa: E731
    attack(k, keys, quiet_text, list(sends_for(mallory, "svc_call", task, TASKS[task].args, wrap)))


def test_every_syscall_taking_arguments_has_base_arguments():
    assert not [c for c in SYSCALLS_WITH_ARGS if c not in BASE and SYSCALLS[c].args and
                any(a.required for a in SYSCALLS[c].args.values())]
