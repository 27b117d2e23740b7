"""Boot fails, at once and in words, when what the operator asked for cannot work; a driver that
keeps dying is given up instead of restarted for ever."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import zmq.asyncio

from llmos.kernel import supervisor as supervision
from llmos.kernel.devices import Devices
from llmos.kernel.driverport import DriverPort
from llmos.kernel.errors import SyscallError
from llmos.kernel.supervisor import DriverHandle, Supervisor
from llmos.specs.modelspec import DEFAULT_MODEL

BOOT_TIMEOUT_S = 180      # a guard against a hang, not a measure: the boot should end in seconds


def boot(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    """`python -m llmos.kernel` on a socket in a private (0700) runtime dir, run to its end."""
    runtime = Path(tempfile.mkdtemp(prefix="llmos-run-"))   # short, for the ipc path; mkdtemp makes it 0700
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "CUDA_VISIBLE_DEVICES": ""}
    try:
        return subprocess.run([sys.executable, "-m", "llmos.kernel", "--socket", f"ipc://{runtime}/kernel.sock",
                               "--state-dir", str(tmp_path / "state"), *flags],
                              env=env, capture_output=True, text=True, timeout=BOOT_TIMEOUT_S)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def refusals(out: str) -> list[str]:
    """The reasons the kernel gave for failing its boot (structlog JSON lines on stderr)."""
    reasons = []
    for line in out.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") in ("boot.refused", "boot.failed"):
            reasons.append(record["reason"])
    return reasons


def test_boot_on_a_cuda_device_torch_cannot_see_fails_naming_the_device(tmp_path):
    done = boot(tmp_path, "--device", "cuda:0", "--no-model")
    assert done.returncode == 1, done.stderr[-3000:]
    [reason] = refusals(done.stderr)
    assert "cuda:0" in reason and "no device" in reason
    assert "driver.crashed" not in done.stderr and "Traceback" not in done.stderr   # said once, not restarted


def test_boot_with_an_unknown_model_fails_listing_the_known_names(tmp_path):
    done = boot(tmp_path, "--device", "cpu", "--model", "nosuch")
    assert done.returncode == 1, done.stderr[-3000:]
    [reason] = refusals(done.stderr)
    assert "unknown model 'nosuch'" in reason and DEFAULT_MODEL in reason


def test_boot_with_a_model_whose_files_are_broken_fails(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    done = boot(tmp_path, "--device", "cpu", "--model", str(broken))
    assert done.returncode == 1, done.stderr[-3000:]
    [reason] = refusals(done.stderr)
    assert "boot model" in reason and str(broken) in reason
    assert "model.preload_failed" not in done.stderr


class ExitingSupervisor(Supervisor):
    """Children that exit as soon as they start: a driver that keeps dying."""

    def _command(self, drv):
        return [sys.executable, "-c", "raise SystemExit(3)"]


async def test_a_driver_that_keeps_dying_goes_down_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(supervision, "MAX_BACKOFF_S", 0.0)      # restart at once: the count is what matters
    downs, failures = [], asyncio.get_running_loop().create_future()

    async def on_down(drv, why):
        downs.append(why)

    async def on_failed(drv, why):
        failures.set_result(why)

    ctx = zmq.asyncio.Context()
    sup = ExitingSupervisor(ctx, f"ipc://{tmp_path}/drivers.sock", lambda drv, msg: None, on_down,
                            lambda drv: asyncio.sleep(0), on_failed=on_failed)
    try:
        await sup.start(["cpu"])
        why = await asyncio.wait_for(failures, BOOT_TIMEOUT_S)
        drv = sup.drivers["cpu"]
        assert drv.state == "down" and drv.gone.is_set()
        assert len(downs) == supervision.CRASH_LIMIT
        assert "exited with code 3" in why and f"crashed {supervision.CRASH_LIMIT} times" in why
    finally:
        await sup.close()
        ctx.term()


class HeldLauncher:
    """Starts a real child only when told: a spawn still under way when the supervisor closes."""
    node = "here"

    def __init__(self):
        self.go = asyncio.Event()
        self.child = None

    async def launch(self, drv):
        await self.go.wait()
        self.child = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
        return self.child


async def test_a_child_whose_start_was_under_way_at_close_is_killed_not_left_behind(tmp_path):
    ctx = zmq.asyncio.Context()
    sup = Supervisor(ctx, f"ipc://{tmp_path}/drivers.sock", lambda drv, msg: None,
                     lambda drv, why: asyncio.sleep(0), lambda drv: asyncio.sleep(0))
    launcher = HeldLauncher()
    try:
        await sup.start([])
        adding = asyncio.create_task(sup.add("cpu:9", launcher))
        await asyncio.sleep(0.05)       # the spawn waits on the launcher: close finds no child yet
        await sup.close()
        launcher.go.set()
        await asyncio.wait_for(adding, BOOT_TIMEOUT_S)
        assert launcher.child.returncode is not None     # killed and reaped, not serving nobody
    finally:
        if launcher.child and launcher.child.returncode is None:
            launcher.child.kill()
            await launcher.child.wait()
        ctx.term()


async def test_a_load_waiting_on_a_driver_that_goes_down_fails_at_once_naming_the_device():
    drv = DriverHandle("cuda:0")
    port = DriverPort()
    port.attach(SimpleNamespace(drivers={"cuda:0": drv}))
    devices = Devices(["cuda:0"], port, requests=None, procs=None, max_running_per_process=4)
    waiting = asyncio.create_task(devices.wait_driver("cuda:0"))
    await asyncio.sleep(0)      # the waiter is parked on the driver coming up
    drv.state, drv.failure = "down", "it crashed 5 times in 9 s"
    drv.gone.set()
    with pytest.raises(SyscallError) as err:
        await asyncio.wait_for(waiting, BOOT_TIMEOUT_S)
    assert err.value.errno == "EIO" and "device cuda:0 is down: it crashed 5 times" in str(err.value)


def test_a_driver_runs_in_the_kernel_s_session_in_a_process_group_of_its_own(kernel):
    """Its own process group: a terminal's Ctrl-C reaches the kernel alone, which stops its children.
    The kernel's session: Linux schedules a session as one group (autogroup), so a driver in a session of
    its own took an equal share against the operator's, nice-19 jobs included (supervisor.OWN_PROCESS_GROUP)."""
    with kernel.client() as c:
        pid = c.devices()[0]["os_pid"]
    assert os.getsid(pid) == os.getsid(kernel.proc.pid)
    assert os.getpgid(pid) == pid != os.getpgid(kernel.proc.pid)
