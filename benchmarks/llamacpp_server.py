"""llama.cpp served as Ollama serves it: a server process, its clients streaming over HTTP.

cpu_vs_llamacpp.py's in-process llama.cpp has no process boundary at all: its tokens reach the caller
as a function's return. What a CPU user actually runs is a server (Ollama: a Go server over llama.cpp;
here llama-cpp-python's own OpenAI-compatible server, `python -m llama_cpp.server`, which like
OLLAMA_NUM_PARALLEL=1 serves one request at a time), and a client in another process reading each
token as an HTTP server-sent event: on two cores, the same wake-ups per token that llmos's kernel and
client cost. This side measures that, with the same GGUF, thread count, text and greedy settings.

For a single stream only, each turn after the benchmark's settle: given 128-token requests back to
back, this server fell from ~90 tokens/s to ~45 from the third on and stayed there until it had a
pause (its process then ran 6 threads, not 4, and 1.3 cores for 2 of its own: something of
llama-cpp-python's server, not llama.cpp's decode), which would make a crowd row say more about it
than about serving.

Needs the server's packages (`pip install fastapi sse-starlette starlette-context`, beside the
`llamacpp` extra); the side is left out, with a line saying why, when they are missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

from llmos.userland.testing import free_tcp_port, stop_process

# The server builds its Llama itself: ask for use_extra_bufts=False there too (0.3.36's extra buffer
# types crash llama_decode on AMX CPUs), then run its command line.
LAUNCH = """
import sys
import llama_cpp.llama_cpp as low
defaults = low.llama_model_default_params
def model_params():
    params = defaults()
    params.use_extra_bufts = False
    return params
low.llama_model_default_params = model_params
from llama_cpp.server.__main__ import main
sys.argv = ["llama_cpp.server", *sys.argv[1:]]
main()
"""


def missing() -> str | None:
    """Why the server side cannot run here, or None."""
    try:
        import httpx  # noqa: F401
        import llama_cpp.server.app  # noqa: F401
    except ImportError as exc:
        return f"llama.cpp server side left out: {exc} (pip install fastapi sse-starlette starlette-context)"
    return None


class LlamaCppServer:
    """llama_cpp.server on the GGUF, on loopback; `one` streams a request from this process."""

    def __init__(self, path: str, threads: int, n_ctx: int, timeout: float = 120.0):
        import httpx

        port = free_tcp_port()
        self.log = tempfile.TemporaryFile()      # its chatter (model metadata, a line a request): no pipe to fill
        self.url = f"http://127.0.0.1:{port}/v1/completions"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "--model", path, "--n_threads", str(threads),
             "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx), "--host", "127.0.0.1", "--port", str(port)],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"llama_cpp.server exited: {self.log.read().decode(errors='replace')[-2000:]}")
            try:
                self.http.get(f"http://127.0.0.1:{port}/v1/models").raise_for_status()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    self.close()
                    raise TimeoutError("llama_cpp.server did not answer") from None
                time.sleep(0.2)

    def one(self, text: str, new: int) -> tuple[int, float, float]:
        """(completion tokens, seconds to the first token, seconds in all) of one streamed greedy request:
        an event a token, as Ollama streams."""
        body = {"prompt": text, "max_tokens": new, "temperature": 0.0, "top_k": 1, "stream": True}
        start, first, tokens = time.perf_counter(), None, 0
        with self.http.stream("POST", self.url, json=body) as reply:
            reply.raise_for_status()
            for line in reply.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choice = json.loads(line[6:])["choices"][0]
                if choice["finish_reason"] is None or choice["text"]:   # the last event may only say why it ended
                    tokens += 1
                    first = first or time.perf_counter() - start
        return tokens, first or 0.0, time.perf_counter() - start

    def close(self) -> None:
        self.http.close()
        stop_process(self.proc, timeout=10)
        self.log.close()
