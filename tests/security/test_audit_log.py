"""The audit log cannot be flooded out by one user, and `llmos audit --verify` sees cuts at either end.

Most tests drive kernel/audit.py's AuditLog directly on a temporary state dir (a fake clock for the
denial windows); a few boot a real kernel and run the real `llmos audit --verify`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
from pathlib import Path

import pytest

from harness import KernelProcess, raised, wait_until
from llmos.kernel import audit as audit_mod
from llmos.kernel import auditrate
from llmos.kernel.audit import AuditLog
from llmos.kernel.auditsink import DEFAULT_SYSLOG
from llmos.kernel.config import ConfigError, load
from llmos.specs import SYSCALLS, auditlog
from llmos.userland.cli.exits import EXIT_FAILED


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def records(state: Path) -> list[dict]:
    return [json.loads(line) for path in auditlog.files(state) for line in path.read_text().splitlines()]


def events(state: Path, event: str) -> list[dict]:
    return [r for r in records(state) if r["event"] == event]


def a_log(state: Path, lines: int = 40, **kw) -> AuditLog:
    log = AuditLog(state, **kw)
    for i in range(lines):
        log.record("hello", pid=i, principal="alice", program=f"p{i}", caps=["ps"])
    return log


def rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


# -- every line is bounded -------------------------------------------------------------------------

def test_a_field_too_long_is_cut_to_a_preview_with_its_length_and_sha256():
    caps = [f"cap{i:07d}" for i in range(200_000)]
    line = auditlog.make_line(auditlog.GENESIS, {"event": "denied", "caps": caps})
    assert len(line.encode()) <= auditlog.LINE_MAX
    full = json.dumps(caps, sort_keys=True, separators=(",", ":")).encode()
    cut = json.loads(line)["caps"]
    assert cut["len"] == len(full) and cut["sha256"] == hashlib.sha256(full).hexdigest()
    assert cut["cut"].startswith('["cap0000000","cap0000001"')
    assert len(json.dumps(cut).encode()) <= auditlog.FIELD_MAX


def test_a_long_string_field_keeps_its_utf8_length_and_hash():
    name = "é\x00" * 5000
    line = auditlog.make_line(auditlog.GENESIS, {"event": "load_path", "model": name})
    cut = json.loads(line)["model"]
    assert cut["len"] == len(name.encode()) and cut["sha256"] == hashlib.sha256(name.encode()).hexdigest()
    assert name.startswith(cut["cut"]) and len(json.dumps(cut).encode()) <= auditlog.FIELD_MAX


def test_a_line_of_many_fields_stays_under_the_hard_cap():
    record = {"event": "kill", **{f"field{i}": "x" * 300 for i in range(100)}}
    line = auditlog.make_line(auditlog.GENESIS, record)
    assert len(line.encode()) <= auditlog.LINE_MAX
    kept = json.loads(line)
    assert kept["event"] == "kill" and set(kept["fields"]) == {"cut", "len", "sha256"}


def test_a_bounded_line_is_bounded_again_unchanged():
    record = json.loads(auditlog.make_line(auditlog.GENESIS, {"event": "x", "caps": ["a" * 50] * 100}))
    prev = record.pop("prev")
    assert json.loads(auditlog.make_line(prev, record)) == {**record, "prev": prev}


def test_a_hello_asking_for_200000_caps_is_einval_at_the_door_and_writes_no_line(tcp_kernel, make_user):
    name, key = make_user()
    error = raised(tcp_kernel.client, "greedy", caps=[f"cap{i:07d}" for i in range(200_000)], key=key)
    assert error.errno == "EINVAL" and "'caps' has more than" in error.message
    assert not [r for r in events(tcp_kernel.state_dir, "denied") if r.get("principal") == name]


def test_a_denied_hello_asking_for_the_most_caps_it_may_writes_one_bounded_line(tcp_kernel, make_user):
    name, key = make_user()
    caps_arg = SYSCALLS["hello"].args["caps"]
    caps = [f"c{i:0{caps_arg.max_len - 1}d}" for i in range(caps_arg.max_items)]
    error = raised(tcp_kernel.client, "greedy", caps=caps, key=key)
    assert error.errno == "EPERM" and f"and {len(caps) - 8} more" in error.message and len(error.message) < 1024
    denied = [r for r in events(tcp_kernel.state_dir, "denied") if r.get("principal") == name]
    assert len(denied) == 1
    full = json.dumps(sorted(caps), separators=(",", ":")).encode()
    assert denied[0]["caps"]["len"] == len(full) and denied[0]["caps"]["sha256"] == hashlib.sha256(full).hexdigest()
    longest = max(len(line.encode()) for line in (tcp_kernel.state_dir / "audit.log").read_text().splitlines())
    assert longest <= auditlog.LINE_MAX


# -- denials are rate-limited and summarised ---------------------------------------------------------

def test_a_thousand_denials_of_one_principal_write_a_few_lines_and_a_summary_counting_the_rest(tmp_path):
    clock = Clock()
    log = AuditLog(tmp_path, clock=clock)
    for i in range(1000):
        log.record("denied", call="hello" if i % 2 else "load", principal="alice", caps=["admin"])
        clock.now += 0.01
    assert len(events(tmp_path, "denied")) == auditrate.KEEP_PER_KEY
    clock.now += auditrate.WINDOW_S
    log.record("hello", pid=1, principal="bob", program="p", caps=[])
    (summary,) = events(tmp_path, "denied_summary")
    assert summary["who"] == "alice" and summary["count"] == 1000 - auditrate.KEEP_PER_KEY
    assert summary["calls"] == {"hello": 500 - 2, "load": 500 - 3}
    assert len(records(tmp_path)) < 20


def test_the_summary_of_an_open_window_is_written_at_close(tmp_path):
    log = AuditLog(tmp_path, clock=Clock())
    for _ in range(50):
        log.record("auth_failed", public_key="K" * 40)
    log.close()
    (summary,) = events(tmp_path, "denied_summary")
    assert summary["who"] == "K" * 40 and summary["kind"] == "public_key" and summary["count"] == 50 - auditrate.KEEP_PER_KEY
    assert records(tmp_path)[-1]["event"] == "checkpoint"


def test_a_window_that_ends_while_nothing_is_written_is_summarised_by_tick(tmp_path):
    clock = Clock()
    log = AuditLog(tmp_path, clock=clock)
    for _ in range(20):
        log.record("denied", call="load", principal="alice", denial=True)
    log.tick()
    assert not events(tmp_path, "denied_summary")
    clock.now += auditrate.WINDOW_S + 1
    log.tick()
    assert events(tmp_path, "denied_summary")[0]["count"] == 20 - auditrate.KEEP_PER_KEY


def test_an_event_marked_as_a_denial_is_limited_too(tmp_path):
    log = AuditLog(tmp_path, clock=Clock())
    for _ in range(30):
        log.record("quota_refused", principal="alice", denial=True)
    assert len(events(tmp_path, "quota_refused")) == auditrate.KEEP_PER_KEY
    assert "denial" not in events(tmp_path, "quota_refused")[0]


def test_denials_of_many_keys_share_one_bucket_past_the_tables_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(auditrate, "MAX_KEYS", 4)
    log = AuditLog(tmp_path, clock=Clock())
    for i in range(500):
        log.record("auth_failed", public_key=f"key{i:05d}")
    assert len(log.limiter.keys) <= 5
    assert len(events(tmp_path, "auth_failed")) <= auditrate.KEEP_PER_WINDOW
    log.close()
    summaries = events(tmp_path, "denied_summary")
    assert len(summaries) <= auditrate.SUMMARY_LINES + 1
    assert sum(s["count"] for s in summaries) + len(events(tmp_path, "auth_failed")) == 500
    assert any(s["who"] == auditrate.OTHERS for s in summaries)


def test_denials_across_all_principals_are_bounded_per_window(tmp_path):
    clock = Clock()
    log = AuditLog(tmp_path, clock=clock)
    for i in range(2000):
        log.record("denied", call="hello", principal=f"user{i}")
    assert len(events(tmp_path, "denied")) == auditrate.KEEP_PER_WINDOW
    clock.now += auditrate.WINDOW_S
    log.tick()
    assert len(events(tmp_path, "denied_summary")) <= auditrate.SUMMARY_LINES + 1


# -- checkpoints anchor the chain; verify sees cuts ------------------------------------------------------

@pytest.fixture
def rotated(tmp_path, monkeypatch) -> Path:
    """A state dir whose log spans several files, written by a kernel that stopped cleanly."""
    monkeypatch.setattr(audit_mod, "CHECKPOINT_EVERY", 16)
    log = a_log(tmp_path, lines=120, max_bytes=4096)
    log.close()
    assert len(auditlog.files(tmp_path)) >= 3
    return tmp_path


def test_an_untouched_log_verifies_intact(rotated):
    verdict = auditlog.verify_dir(rotated)
    assert verdict.problem is None and verdict.notes == []
    assert verdict.lines == sum(len(p.read_text().splitlines()) for p in auditlog.files(rotated))


def test_a_reopened_log_goes_on_verifying(rotated):
    a_log(rotated, lines=5).close()
    assert auditlog.verify_dir(rotated).problem is None


def test_the_audit_key_and_head_file_are_private(tmp_path):
    a_log(tmp_path, lines=1).close()
    for name in (auditlog.KEY_FILE, auditlog.HEAD_FILE, auditlog.FILE_NAME):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700


def test_removing_the_first_lines_of_the_oldest_file_is_a_cut_at_the_head(rotated):
    oldest = auditlog.files(rotated)[0]
    rewrite(oldest, oldest.read_text().splitlines()[3:])
    verdict = auditlog.verify_dir(rotated)
    assert verdict.problem and "removed" in verdict.problem and oldest.name in verdict.problem


def test_removing_the_oldest_file_up_to_a_checkpoint_is_a_cut_at_the_head(rotated):
    oldest = auditlog.files(rotated)[0]
    lines = oldest.read_text().splitlines()
    second = [n for n, line in enumerate(lines) if '"event":"checkpoint"' in line][1]
    rewrite(oldest, lines[second:])
    assert "removed" in auditlog.verify_dir(rotated).problem


def test_removing_the_last_lines_of_the_newest_file_is_a_cut_tail(rotated):
    newest = auditlog.files(rotated)[-1]
    rewrite(newest, newest.read_text().splitlines()[:-2])
    verdict = auditlog.verify_dir(rotated)
    assert verdict.problem and "last 2 lines" in verdict.problem


def test_editing_the_last_line_is_seen(rotated):
    newest = auditlog.files(rotated)[-1]
    lines = newest.read_text().splitlines()
    lines[-1] = lines[-1].replace('"why":"shutdown"', '"why":"boot"')
    rewrite(newest, lines)
    problem = auditlog.verify_dir(rotated).problem
    assert problem and f"{newest.name}:{len(lines)}: " in problem and "HMAC" in problem


def test_editing_the_last_line_of_a_running_kernels_log_is_seen(tmp_path):
    a_log(tmp_path, lines=3)       # not closed: the last line is a hello, not a checkpoint
    path = tmp_path / auditlog.FILE_NAME
    lines = path.read_text().splitlines()
    lines[-1] = lines[-1].replace('"program":"p2"', '"program":"innocent"')
    rewrite(path, lines)
    assert "last line" in auditlog.verify_dir(tmp_path).problem


def test_a_rotated_file_removed_is_seen(rotated):
    auditlog.files(rotated)[0].unlink()
    verdict = auditlog.verify_dir(rotated)
    assert verdict.problem and "removed" in verdict.problem


def test_a_file_the_kernel_rotated_away_is_a_note_not_a_problem(tmp_path, monkeypatch):
    monkeypatch.setattr(audit_mod, "ROTATIONS", 2)
    a_log(tmp_path, lines=200, max_bytes=4096).close()
    verdict = auditlog.verify_dir(tmp_path)
    assert verdict.problem is None
    assert any("rotated away" in note for note in verdict.notes)


def test_a_chain_rebuilt_after_removing_lines_fails_the_checkpoints_key(rotated):
    lines = [line for p in auditlog.files(rotated) for line in p.read_text().splitlines()]
    del lines[5:8]
    prev, rebuilt = auditlog.GENESIS, []
    for line in lines:                       # the attacker recomputes every hash after the cut
        record = json.loads(line)
        record.pop("prev")
        line = auditlog.make_line(prev, record)
        rebuilt.append(line)
        prev = auditlog.line_hash(line)
    for path in auditlog.files(rotated)[:-1]:
        path.unlink()
    rewrite(rotated / auditlog.FILE_NAME, rebuilt)
    verdict = auditlog.verify_dir(rotated)
    assert verdict.problem and "key" in verdict.problem


def test_a_tail_cut_while_the_kernel_was_down_stays_visible_after_the_next_boot(rotated):
    newest = auditlog.files(rotated)[-1]
    rewrite(newest, newest.read_text().splitlines()[:-3])
    a_log(rotated, lines=2).close()           # the next boot writes a new head
    verdict = auditlog.verify_dir(rotated)
    assert verdict.problem and "cut or changed while no kernel ran" in verdict.problem


def test_a_head_file_rewound_without_the_key_is_refused(rotated):
    newest = auditlog.files(rotated)[-1]
    lines = newest.read_text().splitlines()[:-2]
    rewrite(newest, lines)
    head = json.loads((rotated / auditlog.HEAD_FILE).read_text())
    head.update(count=head["count"] - 2, last=auditlog.line_hash(lines[-1]))
    (rotated / auditlog.HEAD_FILE).write_text(json.dumps(head))
    assert "HMAC" in auditlog.verify_dir(rotated).problem


def test_a_removed_head_file_is_a_problem(rotated):
    (rotated / auditlog.HEAD_FILE).unlink()
    assert "head" in auditlog.verify_dir(rotated).problem


def test_without_the_key_the_chain_is_checked_and_the_anchors_are_said_to_be_unchecked(rotated, tmp_path_factory):
    copy = tmp_path_factory.mktemp("copy")
    for path in auditlog.files(rotated):
        (copy / path.name).write_bytes(path.read_bytes())
    verdict = auditlog.verify_dir(copy)
    assert verdict.problem is None and any("key" in note for note in verdict.notes)


def test_a_log_from_before_the_anchors_is_adopted_with_a_note(tmp_path):
    legacy, prev = [], auditlog.GENESIS
    for i in range(3):
        line = auditlog.make_line(prev, {"ts": 1.0, "event": "hello", "pid": i})
        legacy.append(line)
        prev = auditlog.line_hash(line)
    rewrite(tmp_path / auditlog.FILE_NAME, legacy)
    a_log(tmp_path, lines=2).close()
    verdict = auditlog.verify_dir(tmp_path)
    assert verdict.problem is None and any("before" in note for note in verdict.notes)


def test_verify_of_a_real_kernels_log_sees_a_cut_tail_through_the_cli(tmp_path):
    k = KernelProcess(tmp_path / "k", env={"LLMOS_NO_SERVICES": "1"}).start()
    try:
        k.client("audited").close()
        r = k.cli("audit", "--verify")
        assert r.returncode == 0 and r.stdout.endswith("lines, chain intact\n"), r.stderr
    finally:
        k.stop()
    log = k.state_dir / auditlog.FILE_NAME
    assert json.loads(log.read_text().splitlines()[-1])["why"] == "shutdown"
    rewrite(log, log.read_text().splitlines()[:-2])
    r = k.cli("audit", "--verify", "--state-dir", str(k.state_dir))
    assert r.returncode == EXIT_FAILED
    assert r.stderr.startswith("llmos audit: EBADMSG: ") and "the last 2 lines" in r.stderr


# -- forwarding to syslog -------------------------------------------------------------------------------

@pytest.fixture
def syslog_socket(tmp_path):
    path = tmp_path / "log.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    yield path, sock
    sock.close()


def test_each_audit_line_is_forwarded_to_the_syslog_socket(tmp_path, syslog_socket):
    path, sock = syslog_socket
    log = AuditLog(tmp_path / "state", syslog=str(path))
    log.record("hello", pid=1, principal="alice", program="p", caps=["ps"])
    log.close()
    got = [sock.recv(65536).decode() for _ in range(len(records(tmp_path / "state")))]
    assert got[0].startswith("<")                      # a syslog priority: <facility * 8 + severity>
    assert any('"event":"hello"' in g and '"program":"p"' in g for g in got)
    assert all("llmos-audit: " in g for g in got)


def test_a_syslog_that_cannot_be_reached_never_breaks_the_audit_log(tmp_path, syslog_socket):
    path, sock = syslog_socket
    log = AuditLog(tmp_path / "state", syslog=str(tmp_path / "nobody-listens.sock"))
    log.record("hello", pid=1, principal="alice", program="p", caps=[])
    gone = AuditLog(tmp_path / "other", syslog=str(path))
    sock.close()
    os.unlink(path)
    gone.record("hello", pid=2, principal="bob", program="q", caps=[])
    log.close()
    gone.close()
    assert events(tmp_path / "state", "hello") and events(tmp_path / "other", "hello")


def test_the_audit_section_of_the_config_is_read_and_checked(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[audit]\nsyslog = "/run/x.sock"\nfacility = "local3"\n')
    s = load({"config": str(config)}, env={})
    assert s.audit_syslog == "/run/x.sock" and s.audit_syslog_facility == "local3"
    config.write_text("[audit]\nsyslog = true\n")
    assert load({"config": str(config)}, env={}).audit_syslog == DEFAULT_SYSLOG
    config.write_text("[audit]\nsyslog = false\n")
    assert load({"config": str(config)}, env={}).audit_syslog is None
    for bad in ('syslog = 3', 'syslog = "relative.sock"', 'facility = "nosuch"', 'sylog = true'):
        config.write_text(f"[audit]\n{bad}\n")
        with pytest.raises(ConfigError, match=r"\[audit\]"):
            load({"config": str(config)}, env={})


def test_a_kernel_with_audit_syslog_in_its_config_forwards_its_boot(tmp_path, syslog_socket):
    path, sock = syslog_socket
    config = tmp_path / "kernel.toml"
    config.write_text(f'[audit]\nsyslog = "{path}"\n')
    k = KernelProcess(tmp_path / "k", extra=["--config", str(config)], env={"LLMOS_NO_SERVICES": "1"}).start()
    try:
        seen: list[str] = []
        assert wait_until(lambda: seen.append(sock.recv(65536).decode()) or any('"event":"boot"' in s for s in seen))
    finally:
        k.stop()
