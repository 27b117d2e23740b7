"""Run `llmos serve` as a real subprocess, for tests and benchmarks: started on a free port, stopped after.

    with GatewayProcess(kernel.cli_env(), keys=tmp / "keys.json") as gw:
        openai.OpenAI(base_url=gw.url + "/v1", api_key="-").models.list()
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import httpx

from ..testing import LLMOS_COMMAND, free_tcp_port, stop_process, wait_until


class GatewayProcess:
    """`llmos serve` on 127.0.0.1:<free port>; its stderr (the access log) goes to a file, read by .log()."""

    def __init__(self, env: dict[str, str], keys: Path | str | None = None, extra: list[str] | None = None):
        self.env = env
        self.port = free_tcp_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._logdir = tempfile.TemporaryDirectory(prefix="llmos-gateway-")
        # No table unless one is named: a path that does not exist means "no keys", never the user's own table.
        self.keys = str(keys or Path(self._logdir.name) / "no-keys.json")
        self.extra = list(extra or [])
        self.log_path = Path(self._logdir.name) / "gateway.err"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "GatewayProcess":
        args = [*LLMOS_COMMAND, "serve", "--port", str(self.port), "--keys", self.keys, *self.extra]
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(args, env=self.env, stdout=subprocess.DEVNULL, stderr=err)
        if not wait_until(self._live, timeout, interval=0.1):
            self.stop()
            raise RuntimeError(f"llmos serve did not answer /health/live within {timeout:g}s:\n{self.log()[-3000:]}")
        return self

    def _live(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"llmos serve exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        try:
            return httpx.get(self.url + "/health/live", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        code = None if self.proc is None else stop_process(self.proc, timeout=15)
        self._logdir.cleanup()
        return code

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
