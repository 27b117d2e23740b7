"""The service host: proved by a token no client can read, and reading files only where the operator allows."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from harness import KernelProcess, errno_of, raised, wait_until
from llmos.specs.auditlog import FILE_NAME as AUDIT_FILE
from llmos.userland import AsyncClient, LLMOSError


@pytest.fixture(scope="module")
def allowed(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("allowed-docs")
    (folder / "inside.txt").write_text("# Shipping\n\nParcels leave the warehouse within two days.")
    (folder / "environ.txt").symlink_to("/proc/self/environ")
    return folder


@pytest.fixture(scope="module")
def svc_kernel(tmp_path_factory, tiny_bert, allowed):
    work = tmp_path_factory.mktemp("svc-trust")
    config = work / "config.toml"
    config.write_text(f'[services]\nread_dirs = ["{allowed}"]\n')
    k = KernelProcess(work, extra=["--config", str(config)],
                      env={"LLMOS_SERVICES_EMBED_MODEL": tiny_bert}).start()
    with k.client("svc-waiter") as c:
        assert wait_until(lambda: c.svc_list()["host"]["state"] == "up", timeout=60)
    yield k
    k.stop()


@pytest.fixture
def client(svc_kernel, request):
    with svc_kernel.client(request.node.name[:60]) as c:
        yield c


def test_the_service_host_environment_holds_no_token(client):
    host_pid = client.svc_list()["host"]["os_pid"]
    environ = Path(f"/proc/{host_pid}/environ").read_bytes()
    assert not [v for v in environ.split(b"\0") if v.startswith(b"LLMOS_SERVICE_TOKEN=")]


def test_hello_with_a_made_up_service_token_is_refused_and_audited(svc_kernel):
    async def impostor():
        async with AsyncClient(svc_kernel.operator_socket, name="impostor", service_token="made-up"):
            pass

    with pytest.raises(LLMOSError) as info:
        asyncio.run(impostor())
    assert info.value.errno == "EPERM"
    lines = [json.loads(line) for line in (svc_kernel.state_dir / AUDIT_FILE).read_text().splitlines()]
    assert any(r.get("event") == "denied" and r.get("call") == "hello" and "service_token" in r.get("why", "")
               for r in lines)


def test_kb_ingest_reads_a_file_inside_an_allowed_folder(client, allowed):
    r = client.svc_call("kb", "ingest", {"kb": "ok", "path": str(allowed / "inside.txt")})
    assert r["documents"] == [{"source": "inside.txt", "chunks": 1}]
    client.svc_call("kb", "drop", {"kb": "ok"})


def test_a_file_a_service_reads_is_in_the_kernels_audit_log_with_the_callers_principal(client, svc_kernel, allowed):
    client.svc_call("kb", "ingest", {"kb": "audited", "path": str(allowed / "inside.txt")})

    def audited():
        lines = [json.loads(line) for line in (svc_kernel.state_dir / AUDIT_FILE).read_text().splitlines()]
        return [r for r in lines if r["event"] == "file_read" and r["pid"] == client.pid]

    assert wait_until(audited, timeout=10)
    record = audited()[0]
    assert record["principal"] == "operator" and record["service"] == "kb"
    assert record["path"] == str((allowed / "inside.txt").resolve())
    client.svc_call("kb", "drop", {"kb": "audited"})


def test_kb_ingest_refuses_a_symlink_out_of_the_allowed_folder(client, allowed):
    error = raised(client.svc_call, "kb", "ingest", {"kb": "leak", "path": str(allowed / "environ.txt")})
    assert error.errno == "EACCES" and "read_dirs" in error.message


def test_kb_ingest_of_a_folder_skips_a_symlink_out_of_it(client, allowed):
    r = client.svc_call("kb", "ingest", {"kb": "dir", "path": str(allowed)})
    assert [d["source"] for d in r["documents"]] == ["inside.txt"]
    assert [s["source"] for s in r["skipped"]] == ["environ.txt"]
    client.svc_call("kb", "drop", {"kb": "dir"})


def test_kb_ingest_refuses_a_file_outside_the_allowed_folders(client, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not for services")
    assert errno_of(client.svc_call, "kb", "ingest", {"kb": "out", "path": str(outside)}) == "EACCES"


def test_kb_ingest_texts_takes_documents_the_caller_read(client):
    r = client.svc_call("kb", "ingest_texts", {"kb": "sent", "docs": [{"name": "a.md", "text": "# A\n\nOne fact."}]})
    assert r["documents"] == [{"source": "a.md", "chunks": 1}]
    client.svc_call("kb", "drop", {"kb": "sent"})


def test_a_kernel_without_read_dirs_lets_services_read_no_file(tmp_path):
    from llmos.services.files import AllowedFiles
    from llmos.services import ServiceError

    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ServiceError) as info:
        AllowedFiles([]).collect(str(tmp_path / "a.txt"), {".txt"}, "kb.ingest")
    assert info.value.errno == "EACCES" and "[services] read_dirs" in info.value.message


@pytest.mark.timeout(30)     # opening the FIFO would block for ever: fail fast instead
def test_a_fifo_in_an_allowed_folder_is_not_opened(tmp_path):
    from llmos.services.files import AllowedFiles

    os.mkfifo(tmp_path / "pipe.txt")
    docs, skipped = AllowedFiles([str(tmp_path)]).collect(str(tmp_path), {".txt"}, "kb.ingest")
    assert docs == [] and skipped == [{"source": "pipe.txt", "why": "not a regular file"}]
