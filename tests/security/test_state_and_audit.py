"""The state dir is the operator's alone, one kernel uses it at a time, and the audit log shows tampering."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from harness import KernelProcess, raised
from llmos.specs import auditlog


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_state_dir_and_its_files_are_private(tcp_kernel, make_user):
    make_user()
    state = tcp_kernel.state_dir
    assert _mode(state) == 0o700
    for name in ("memory.sqlite3", "kernel.log", "audit.log", "principals.json", "keys/kernel.key_secret"):
        assert _mode(state / name) == 0o600, name


def test_boot_repairs_a_loosened_state_dir(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    (state / "memory.sqlite3").touch(mode=0o644)
    os.chmod(state, 0o755)
    os.chmod(state / "memory.sqlite3", 0o644)
    k = KernelProcess(tmp_path / "k", state_dir=state, env={"LLMOS_NO_SERVICES": "1"}).start()
    try:
        assert _mode(state) == 0o700 and _mode(state / "memory.sqlite3") == 0o600
        assert len(k.events("state_dir.repaired")) == 2
    finally:
        k.stop()


def test_a_second_kernel_on_the_same_state_dir_refuses_and_names_the_first(tmp_path):
    first = KernelProcess(tmp_path / "a", state_dir=tmp_path / "state", env={"LLMOS_NO_SERVICES": "1"}).start()
    try:
        second = KernelProcess(tmp_path / "b", state_dir=tmp_path / "state", env={"LLMOS_NO_SERVICES": "1"})
        error = raised_runtime(second.start)
        assert "in use by kernel pid" in error and str(first.proc.pid) in error
    finally:
        first.stop()


def raised_runtime(start) -> str:
    try:
        start(timeout=30)
    except RuntimeError as exc:
        return str(exc)
    raise AssertionError("the second kernel booted")


def test_the_audit_log_records_hellos_denials_and_admin_acts(tcp_kernel, operator, make_user):
    name, key = make_user()
    raised(tcp_kernel.client, "greedy", caps=["admin"], key=key)
    records = [json.loads(line) for line in (tcp_kernel.state_dir / "audit.log").read_text().splitlines()]
    events = {(r["event"], r.get("name") or r.get("principal")) for r in records}
    assert ("user_add", name) in events
    assert ("denied", name) in events
    assert any(r["event"] == "hello" and r["principal"] == "operator" for r in records)


def test_the_audit_chain_verifies_and_shows_a_changed_line(tcp_kernel, make_user, tmp_path):
    make_user()
    log = tcp_kernel.state_dir / "audit.log"
    count, problem = auditlog.verify([log])
    assert problem is None and count >= 3
    lines = log.read_text().splitlines()
    forged = tmp_path / "audit.log"
    lines[1] = lines[1].replace('"event":', '"forged":true,"event":')
    forged.write_text("\n".join(lines) + "\n")
    count, problem = auditlog.verify([forged])
    assert problem is not None and ":3:" in problem      # the line after the changed one breaks the chain


def test_an_ipc_socket_in_a_folder_others_can_enter_is_refused(tmp_path):
    folder = tmp_path / "open"
    folder.mkdir()
    os.chmod(folder, 0o777)
    out = subprocess.run([sys.executable, "-m", "llmos.kernel", "--socket", f"ipc://{folder}/k.sock", "--no-model",
                          "--device", "cpu", "--state-dir", str(tmp_path / "state")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "LLMOS_NO_SERVICES": "1",
                                                                          "XDG_RUNTIME_DIR": str(tmp_path)})
    assert out.returncode == 1
    assert "chmod 700" in out.stderr + out.stdout
