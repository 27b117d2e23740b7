"""A real kernel process on a temporary ipc socket, for integration tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmos.userland import Client, KernelUnavailable, LLMOSError


def raised(fn, *args, **kwargs) -> LLMOSError:
    """The LLMOSError that fn(*args, **kwargs) must raise."""
    with pytest.raises(LLMOSError) as info:
        fn(*args, **kwargs)
    return info.value


def errno_of(fn, *args, **kwargs) -> str:
    """The errno of the LLMOSError that fn(*args, **kwargs) must raise."""
    return raised(fn, *args, **kwargs).errno


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout` passes; True if it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


class KernelProcess:
    """`python -m llmos.kernel` in a subprocess, owned by the test that started it."""

    def __init__(self, workdir: Path, model: str | None = None, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, state_dir: Path | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket = f"ipc://{self.workdir}/k.sock"
        self.state_dir = Path(state_dir or self.workdir / "state")
        self.model = model
        self.extra = extra or []
        self.env = dict(os.environ, **(env or {}))
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "kernel.out"

    def start(self, wait_model: bool = True, timeout: float = 180.0) -> "KernelProcess":
        args = [sys.executable, "-m", "llmos.kernel", "--socket", self.socket, "--state-dir", str(self.state_dir),
                "--device", "cpu"] + (["--model", self.model] if self.model else ["--no-model"]) + self.extra
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        with self.client("harness", deadline=deadline) as c:
            while wait_model and self.model:
                loaded = {m["name"]: m for m in c.models()["loaded"]}
                if loaded.get(self.model, {}).get("state") == "ready":
                    break
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"model {self.model} not ready; kernel log:\n{self.log.read_text()[-4000:]}")
                time.sleep(0.1)
        return self

    def client(self, name: str = "test", deadline: float | None = None, **kw) -> Client:
        deadline = deadline or time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kernel exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                return Client(socket=self.socket, name=name, **kw)
            except KernelUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> "KernelProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
