"""The driver channel: the typed messages between the kernel and its driver processes.

Both ends import these classes, so a field is spelled in one place and a message that does not
fit its class fails where it is decoded (ChannelError), not three calls later as a KeyError.
On the wire each message is one msgpack map ``{"op": NAME, field: value, ...}``; a step's token
events travel as short positional lists (one message per step carries up to a few hundred),
packed and unpacked only by TokenEvent. Errors carry an explicit errno, never one guessed from
a message's text. The channel is internal: it may change between kernel versions (specs/ABI.md).

Why this room is long: it is a catalog, one short dataclass per message of both channels (driver
and service host), read together as the channels' specification; split, a reader would hunt for
the other half of a conversation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from .protocol import ERRNOS, FrameError, pack, unpack

class ChannelError(ValueError):
    """A channel frame that is not one of its channel's messages."""


def device_kind(device: str) -> str:
    """'cuda' for cuda:N, else 'cpu': the one place a device name becomes its kind."""
    return "cuda" if device.startswith("cuda") else "cpu"


@dataclass
class Message:
    """A channel's messages subclass its base (DriverMessage, ServiceMessage) with an op each."""

    op: ClassVar[str] = ""
    by_op: ClassVar[dict[str, type["Message"]]] = {}

    def __init_subclass__(cls, op: str | None = None, **kw):
        super().__init_subclass__(**kw)
        if op is None:
            cls.by_op = {}            # a channel of its own: ops are looked up within it
            return
        cls.op = op
        for base in cls.__mro__[1:]:  # a message both channels speak (ping, result...) is in both
            if base is not Message and "by_op" in base.__dict__:
                base.by_op[op] = cls

    def to_wire(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_wire(cls, body: dict) -> "Message":
        return cls(**body)


def encode(msg: Message) -> bytes:
    return pack({"op": msg.op, **msg.to_wire()})


def decode(frame: bytes, channel: type[Message]) -> Message:
    """One frame as a message of `channel`; ChannelError if it is not one."""
    try:
        body = unpack(frame)
    except FrameError as exc:
        raise ChannelError(str(exc)) from None
    if not isinstance(body, dict):
        raise ChannelError("a channel frame must be a map")
    cls = channel.by_op.get(body.pop("op", None))
    if cls is None:
        raise ChannelError("unknown channel op")
    try:
        return cls.from_wire(body)
    except (TypeError, ValueError, KeyError) as exc:
        raise ChannelError(f"bad '{cls.op}' message: {exc}") from None


class DriverMessage(Message):
    """The driver channel: kernel and one driver process per device."""


class ServiceMessage(Message):
    """The service host channel: kernel and its service host process."""


# -- kernel to driver ---------------------------------------------------------------------------

@dataclass
class Load(DriverMessage, op="load"):
    model: str
    spec: dict                    # llmos.specs.modelspec.ModelSpec.to_wire()
    kv_bytes: int


@dataclass
class Unload(DriverMessage, op="unload"):
    model: str


@dataclass
class Submit(DriverMessage, op="submit"):
    """A generation, its arguments already checked against specs/syscalls.toml by the kernel."""
    rid: int
    model: str
    prompt: str | None
    messages: list[dict] | None
    max_tokens: int
    temperature: float | None     # None: the model's default (drivers/sampling.SamplingDefaults)
    top_p: float | None
    top_k: int | None
    stop: list[str]
    seed: int | None
    priority: int = 0
    cut_in: bool = False          # the fair scheduler allows a short prompt to cut into a running step
    progress: bool = False        # the caller wants prefill progress (TokenEvent.prefill) on a long prompt
    resume: list[int] = field(default_factory=list)   # token ids it had generated on a driver that died
    cache_salt: str = ""          # its principal: cached prompt blocks are shared only among equal salts
    adapter: str = ""             # the LoRA adapter it runs with, as the kernel names it ("alice/base:name"); "": none
    # Structured generation (ABI 1.1), checked by the kernel (kernel/syscalls/structured.py):
    prompt_ids: list[int] | None = None   # the prompt as token ids (/v1/completions' token arrays)
    constraint: dict | None = None    # {json_schema|json|regex|grammar|choice: ...}: drivers/constraints.py
    tools: list | None = None         # OpenAI function specs, rendered into the prompt
    tool_parse: str = ""              # "auto": <tool_call>s parsed out of free text; "forced": the text is one call
    logprobs: bool = False
    top_logprobs: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None   # None: the model's default
    logit_bias: list | None = None    # [[token id, bias], ...]
    min_tokens: int = 0


@dataclass
class Cancel(DriverMessage, ServiceMessage, op="cancel"):
    rid: int


@dataclass
class Embed(DriverMessage, op="embed"):
    rid: int
    model: str
    input: list[str]
    normalize: bool = True


@dataclass
class Ping(DriverMessage, ServiceMessage, op="ping"):
    t: float = 0.0


@dataclass
class Shutdown(DriverMessage, ServiceMessage, op="shutdown"):
    reload: bool = False          # the service host: stopped to be started again by svc_reload


# -- driver to kernel ---------------------------------------------------------------------------

@dataclass
class Hello(DriverMessage, op="hello"):
    """A driver is up: what its device offers the kernel."""
    device: str
    pid: int
    kind: str
    total_bytes: int
    free_bytes: int
    dtype: str
    max_seqs: int                 # sequences its engine batches at once: the kernel's admission window


@dataclass
class DriverFailed(DriverMessage, op="driver_failed"):
    """A driver that cannot serve its device (no such CUDA device, a broken torch) says why,
    instead of crashing: the kernel then stops restarting it."""
    device: str
    message: str


@dataclass
class Loaded(DriverMessage, op="loaded"):
    model: str
    bytes: int
    kv_bytes: int
    context_length: int
    load_s: float
    kind: str
    backend: str = "torch"    # what generates: "torch", or "llama.cpp" (a GGUF on a CPU driver, drivers/llamacpp_runner.py)


@dataclass
class LoadProgress(DriverMessage, op="load_progress"):
    """A load in progress entered a stage (LOAD_STAGES), so whoever waits for it can be told."""
    model: str
    stage: str


LOAD_STAGES = ("reading weights", "tokenizer", "kv cache", "grammars")


@dataclass
class LoadFailed(DriverMessage, op="load_failed"):
    model: str
    message: str


@dataclass
class TokenEvent:
    """What one sequence did in one step: new text, and for its last step why and how it ended."""
    rid: int
    delta: str = ""
    tokens: int = 0
    finish: str | None = None     # None while it runs; "stop" | "length" | "error" at its end
    usage: dict | None = None     # {prompt_tokens, completion_tokens} at its end
    errno: str | None = None      # with finish == "error"
    message: str | None = None
    prefill: list[int] | None = None   # [prompt tokens computed, prompt tokens] while a long prompt is read
    ids: list[int] | None = None       # the `tokens` new token ids: the kernel keeps them to resume elsewhere
    logprobs: list | None = None       # with Submit.logprobs: one entry per new token (drivers/logprobs.py)
    tool_calls: list | None = None     # on the final event of a request with tools: the calls parsed

    def __post_init__(self):
        if self.finish == "error" and self.errno not in ERRNOS:
            raise ValueError(f"an error event needs an errno, got {self.errno!r}")

    def to_list(self) -> list:
        return [self.rid, self.delta, self.tokens, self.finish, self.usage, self.errno, self.message, self.prefill,
                self.ids, self.logprobs, self.tool_calls]

    @classmethod
    def failed(cls, rid: int, errno: str, message: str, tokens: int = 0) -> "TokenEvent":
        return cls(rid, "", tokens, "error", None, errno, message)


@dataclass
class Events(DriverMessage, op="events"):
    """One message per engine step: every sequence that moved, and how full the KV cache is after it."""
    events: list[TokenEvent] = field(default_factory=list)
    kv_usage: float | None = None     # KV blocks in use / blocks, over the device's models (0..1)

    def to_wire(self) -> dict:
        return {"events": [e.to_list() for e in self.events], "kv_usage": self.kv_usage}

    @classmethod
    def from_wire(cls, body: dict) -> "Events":
        return cls([TokenEvent(*row) for row in body["events"]], body.get("kv_usage"))


@dataclass
class Result(DriverMessage, ServiceMessage, op="result"):
    rid: int
    result: Any


@dataclass
class Error(DriverMessage, ServiceMessage, op="error"):
    rid: int
    errno: str
    message: str

    def __post_init__(self):
        if self.errno not in ERRNOS:
            self.errno = "EIO"     # a made-up errno (a plugin's) is still a failure the caller can read


@dataclass
class Pong(DriverMessage, ServiceMessage, op="pong"):
    t: float = 0.0


@dataclass
class Score(DriverMessage, op="score"):
    """Kernel to driver: the summed log-loss of each text under a generate model (answered by Result
    {model, tokens, nll} or Error), computed between engine steps like an embed."""
    rid: int
    model: str
    adapter: str                  # "" for the base model, else the adapter id the kernel chose
    texts: list[str]


@dataclass
class LoadAdapter(DriverMessage, op="load_adapter"):
    """Kernel to driver: install a LoRA adapter over a loaded generate model, from PEFT's files
    (the kernel read them: a driver never touches the state dir). Answered by AdapterLoaded or AdapterFailed."""
    model: str
    adapter: str                  # its id, as Submit.adapter names it
    files: dict[str, bytes]       # adapter_config.json, adapter_model.safetensors


@dataclass
class UnloadAdapter(DriverMessage, op="unload_adapter"):
    model: str
    adapter: str


@dataclass
class AdapterLoaded(DriverMessage, op="adapter_loaded"):
    model: str
    adapter: str
    bytes: int                    # what its weights take on the device


@dataclass
class AdapterFailed(DriverMessage, op="adapter_failed"):
    """The adapter cannot be served over that model (unfit shapes, unknown modules, not loaded): why."""
    model: str
    adapter: str
    message: str


@dataclass
class TrainStart(DriverMessage, op="train_start"):
    """Kernel to driver: train a LoRA adapter over a copy of a loaded generate model (kernel/jobs.py),
    from `checkpoint` (its files, after `step` steps) when a job resumes. Nothing runs until TrainStep."""
    job: str
    model: str
    examples: list[dict]          # checked by the kernel: {messages} or {prompt, completion}
    hyper: dict                   # epochs, lr, rank, alpha, batch_size, max_seq_len, target_modules, steps,
                                  # checkpoint_every, seed
    checkpoint: dict[str, bytes] | None = None
    step: int = 0


@dataclass
class TrainStep(DriverMessage, op="train_step"):
    """Kernel to driver: the fair scheduler gave the job a turn: run its 1-based step `step`."""
    job: str
    step: int


@dataclass
class TrainStop(DriverMessage, op="train_stop"):
    """Kernel to driver: drop the job (cancelled, or the kernel gave up on it)."""
    job: str


@dataclass
class TrainStepped(DriverMessage, op="train_stepped"):
    """Driver to kernel: a step is done; every checkpoint_every steps with the checkpoint's files."""
    job: str
    step: int
    loss: float
    tokens: int                   # tokens the step read: what the job is charged
    checkpoint: dict[str, bytes] | None = None


@dataclass
class TrainDone(DriverMessage, op="train_done"):
    """Driver to kernel, after the last step's TrainStepped: the adapter in PEFT's files."""
    job: str
    files: dict[str, bytes]
    loss: float


@dataclass
class TrainFailed(DriverMessage, op="train_failed"):
    job: str
    errno: str
    message: str

    def __post_init__(self):
        if self.errno not in ERRNOS:
            self.errno = "EIO"


# -- the service host channel (and Cancel, Ping, Shutdown, Result, Error, Pong above) ----------

@dataclass
class Call(ServiceMessage, op="call"):
    """Kernel to host: run a task of a service for the program that made an svc_call."""
    rid: int
    service: str
    task: str
    args: dict
    stream: bool
    deadline: float | None        # seconds left, or None
    caller: dict                  # {pid, name, principal}: name is its label, principal its namespace


@dataclass
class HostHello(ServiceMessage, op="hello"):
    """Host to kernel: it is up, with the services its plugins registered and those that failed."""
    pid: int
    catalog: dict


@dataclass
class FileRead(ServiceMessage, op="file_read"):
    """Host to kernel: a task of call `rid` read this file (under [services] read_dirs), for the audit log."""
    rid: int
    path: str
    bytes: int


@dataclass
class CallDelta(ServiceMessage, op="delta"):
    rid: int
    delta: str


