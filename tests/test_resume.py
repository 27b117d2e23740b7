"""A generation outlives its driver: when the driver dies mid-stream, the kernel re-admits the
request on the restarted driver, resumed after the tokens already sent, and the caller sees the
same text an undisturbed run gives (greedy, or seeded sampling), with no error."""

from __future__ import annotations

import os
import signal

import pytest

from harness import wait_until

PROMPT = "Once upon a time, in a land far away, there lived"
FLOAT32 = ["--dtype", "float32"]   # exact resumption is a float32 promise: bf16 rounds a one-pass prefill differently


def driver_pid(c) -> int:
    return c.devices()[0]["os_pid"]


def kill_driver_mid_stream(k, c, **args) -> tuple[str, dict]:
    """Stream a generation, SIGKILL its driver after the first text, read the stream to its end."""
    stream = c.stream(prompt=PROMPT, **args)
    chunks = iter(stream)
    text = next(chunks)
    os.kill(driver_pid(c), signal.SIGKILL)
    text += "".join(chunks)
    assert text == stream.result["text"]
    return text, stream.result


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.9, "seed": 1234}],
                         ids=["greedy", "seeded"])
def test_a_stream_whose_driver_is_killed_finishes_with_the_text_of_an_undisturbed_run(fresh_kernel, sampling):
    k = fresh_kernel(env={"LLMOS_NO_SERVICES": "1"}, extra=FLOAT32)
    with k.client() as c:
        undisturbed = c.infer(prompt=PROMPT, max_tokens=80, **sampling)
        text, result = kill_driver_mid_stream(k, c, max_tokens=80, **sampling)
    assert k.events("request.requeued"), "the driver must die while the request runs"
    assert text == undisturbed["text"]
    assert result["usage"] == undisturbed["usage"] and result["finish_reason"] == undisturbed["finish_reason"]


def test_an_unseeded_sampled_stream_also_resumes_without_an_error(fresh_kernel):
    k = fresh_kernel(env={"LLMOS_NO_SERVICES": "1"})
    with k.client() as c:
        text, result = kill_driver_mid_stream(k, c, max_tokens=80, temperature=1.0)
    assert k.events("request.requeued")
    assert result["usage"]["completion_tokens"] >= 1 and len(text) > 0
