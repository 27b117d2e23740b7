"""Boot a real kernel on a tiny model, for tests, benchmarks and plugin authors.

A plugin's tests or a benchmark can run the real thing in a few seconds, offline:

    from llmos.userland.testing import KernelProcess, make_tiny_llama

    with KernelProcess(model=make_tiny_llama(tmp / "tiny")) as k, k.client("my-test") as c:
        c.infer(prompt="hello", max_tokens=3)

`KernelProcess` runs `python -m llmos.kernel` on an ipc socket in a private temporary runtime
directory, so the kernel, its drivers and its service host share nothing with a kernel the user
may be running; stop() (or leaving the `with` block) ends the kernel and removes that directory,
and the work directory too when it made one. The tiny models are random 2-layer models with real
tokenizers, saved as folders, so they load through the same path (registry.resolve, then the
driver's loader) as real ones. transformers is imported only when a model is made, so importing
this module stays light.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .client import Client, KernelUnavailable
from .errors import KeyRefused

__all__ = ["KernelProcess", "LLMOS_COMMAND", "make_tiny_bert", "make_tiny_llama", "wait_until"]

LLMOS_COMMAND = [sys.executable, "-m", "llmos.userland.cli"]     # the `llmos` command, as a subprocess runs it


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout` passes; True if it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class KernelProcess:
    """`python -m llmos.kernel` in a subprocess, owned by whoever started it.

    workdir holds the kernel's console log and (unless state_dir is given) its state; without
    one, a temporary directory is made. The sockets (the kernel's, its drivers' and service
    host's) and the boot lock live in a private (0700) temporary runtime directory, short enough
    for an ipc path, so a killed kernel leaves nothing in the user's. stop() removes what it made.
    """

    def __init__(self, workdir: Path | str | None = None, model: str | None = None, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, state_dir: Path | str | None = None, tcp: bool = False):
        self._owned: list[Path] = []    # temporary directories stop() removes (start() makes them again)
        if workdir is None:
            workdir = self._temp_dir("llmos-kernel-")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.runtime_dir = self._temp_dir("llmos-run-")
        self.socket = f"ipc://{self.runtime_dir}/kernel.sock"
        self.operator_socket = self.socket     # the operator's console: the socket itself, or beside a tcp one
        if tcp:    # CurveZMQ on loopback; the harness and the operator use the private ipc console
            port = free_tcp_port()
            self.socket = f"tcp://127.0.0.1:{port}"
            self.operator_socket = f"ipc://{self.runtime_dir}/llmos/kernel.sock"
        self.state_dir = Path(state_dir or self.workdir / "state")
        self.log = self.workdir / "kernel.out"
        self.model = model
        self.extra = list(extra or [])
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None

    def _temp_dir(self, prefix: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        self._owned.append(path)
        return path

    def start(self, wait_model: bool = True, timeout: float = 180.0) -> "KernelProcess":
        """Boot the kernel and wait until it answers (and, with wait_model, until the model is ready).

        If it does not get there within `timeout`, everything is stopped and removed, and the
        error carries the end of the kernel's log.
        """
        for path in self._owned:         # a restart after stop(): the same paths, made again
            path.mkdir(mode=0o700, exist_ok=True)
        env = {**os.environ, "XDG_RUNTIME_DIR": str(self.runtime_dir), **self.env}
        args = [sys.executable, "-m", "llmos.kernel", "--socket", self.socket, "--state-dir", str(self.state_dir),
                "--device", "cpu", *(["--model", self.model] if self.model else ["--no-model"]), *self.extra]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout
            with self.client("harness", deadline=deadline) as c:
                if wait_model and self.model and not wait_until(lambda: self._ready(c), deadline - time.monotonic()):
                    raise RuntimeError(f"model {self.model} not ready after {timeout:g}s")
        except BaseException as exc:
            tail = self.log_tail()
            self.stop(timeout=10)
            if isinstance(exc, Exception):
                raise RuntimeError(f"the kernel did not get ready: {exc}\n--- the end of its log:\n{tail}") from exc
            raise
        return self

    def _ready(self, c: Client) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the kernel exited with {self.proc.returncode}")
        loaded = {m["name"]: m for m in c.models()["loaded"]}
        return loaded.get(self.model, {}).get("state") == "ready"

    def client(self, name: str = "test", deadline: float | None = None, **kw) -> Client:
        """A Client of this kernel, retried until the kernel answers or the deadline (monotonic) passes."""
        deadline = deadline or time.monotonic() + 60
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"the kernel is not running (exit code {code}); its log is {self.log}")
            try:
                return Client(socket=self.socket if "key" in kw else self.operator_socket, name=name, **kw)
            except KernelUnavailable as exc:
                if isinstance(exc, KeyRefused) or time.monotonic() > deadline:    # a refused key stays refused
                    raise
                time.sleep(0.05)

    def cli_env(self, **extra: str) -> dict[str, str]:
        """The environment for a `llmos` subprocess (LLMOS_COMMAND) that talks to this kernel, as its operator."""
        return {**os.environ, "LLMOS_SOCKET": self.operator_socket, "XDG_RUNTIME_DIR": str(self.runtime_dir), **extra}

    def cli(self, *args: str, input: bytes | str | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        """Run `llmos ARGS...` against this kernel: its exit code, stdout and stderr (text)."""
        data = input.encode() if isinstance(input, str) else input
        r = subprocess.run([*LLMOS_COMMAND, *args], input=data, capture_output=True, timeout=timeout,
                           env=self.cli_env(**(env or {})))
        return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(errors="replace"),
                                           r.stderr.decode(errors="replace"))

    def events(self, event: str) -> list[dict]:
        """The kernel's log records (structlog JSON lines) whose event is `event`, oldest first."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
        return found

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the kernel, wait for it (SIGKILL after `timeout`), remove the temporary directories.

        Returns the kernel's exit code (0 if it never started). The kernel stops its drivers and
        service host on SIGTERM; after a SIGKILL they notice they are orphaned and exit.
        """
        code = 0 if self.proc is None else stop_process(self.proc, sig, timeout)
        for path in self._owned:
            shutil.rmtree(path, ignore_errors=True)
        return code

    def __enter__(self) -> "KernelProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- tiny models ----------------------------------------------------------------------------------

CORPUS = """\
The quick brown fox jumps over the lazy dog. A language model reads tokens and writes tokens.
An operating system shares one machine among many programs; a kernel owns the resources and
drivers talk to devices. Paris is the capital of France, Rome is the capital of Italy, and
Berlin is the capital of Germany. Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Questions? Answers!
Caf\u00e9, na\u00efve, \u00fcber, \u65e5\u672c\u8a9e, emoji \U0001f600 and other characters outside ASCII appear too.
"""

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_tiny_llama(dirpath) -> str:
    """A 2-layer LlamaForCausalLM (GQA, tied embeddings) with a byte-level BPE chat tokenizer; deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(dirpath)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(CORPUS.splitlines(), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    config = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True, initializer_range=0.1,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return _save_seeded(LlamaForCausalLM, config, tokenizer, path)


def make_tiny_bert(dirpath) -> str:
    """A 2-layer BertModel with a WordPiece tokenizer, as sentence-transformers would load it; deterministic."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = Path(dirpath)
    path.mkdir(parents=True, exist_ok=True)
    words = sorted({w.strip(".,;:?!").lower() for w in CORPUS.split()} - {""})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *".,;:?!", *words]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), model_max_length=128)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    return _save_seeded(BertModel, config, tokenizer, path)


def _save_seeded(model_class, config, tokenizer, path: Path) -> str:
    """Weights drawn from seed 0 without touching the caller's random state, saved with the tokenizer."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = model_class(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Signal a child if it still runs, wait for it (SIGKILL after `timeout`); its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def free_tcp_port() -> int:
    """A loopback port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curve_dealer(ctx, socket_url: str, key_file: str, routing_id: bytes | None = None, **options: int):
    """A bare DEALER on a tcp kernel, as the user of `key_file` (CurveZMQ), for tests and benchmarks that
    write frames by hand (the client library stops at the first refusal; an attacker does not).
    `options` are further ZeroMQ options by name (RCVHWM=1...); the caller closes the socket."""
    import zmq

    from llmos.specs.keys import KERNEL_KEY_META, read_key_file

    key = read_key_file(key_file)
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.curve_secretkey, sock.curve_publickey = key["secret-key"].encode(), key["public-key"].encode()
    sock.curve_serverkey = key[KERNEL_KEY_META].encode()
    sock.connect(socket_url)
    return sock
