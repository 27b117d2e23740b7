"""Models from paths: only admin names one; FIFOs, devices, huge files and impossible names are EINVAL;
resolving never blocks the kernel's loop; a load has a time limit."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest

from harness import KernelProcess, errno_of, raised, wait_until


@pytest.fixture(scope="module")
def admin(tcp_kernel):
    with tcp_kernel.client("model-admin", caps=["admin", "load", "infer", "embed"]) as c:
        yield c


@pytest.fixture
def model_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    return folder


def test_a_user_without_admin_may_not_name_a_path(tcp_kernel, make_user, tiny_llama):
    _, key_file = make_user()
    with tcp_kernel.client("path-namer", key=key_file) as c:
        assert errno_of(c.load_model, tiny_llama) == "EPERM"
        assert errno_of(c.infer, prompt="x", max_tokens=1, model=tiny_llama) == "EPERM"
        assert errno_of(c.embed, "x", model="/no/such/folder") == "EPERM"     # existence is not probed


@pytest.mark.timeout(120)    # a kernel that opened the FIFO would hang the load: the client's 60 s, then this
def test_a_fifo_named_safetensors_is_einval(admin, model_folder):
    os.mkfifo(model_folder / "model.safetensors")
    error = raised(admin.load_model, str(model_folder))
    assert error.errno == "EINVAL" and "regular file" in error.message


@pytest.mark.timeout(120)
def test_a_fifo_as_the_model_path_is_einval(admin, tmp_path):
    os.mkfifo(tmp_path / "weights.gguf")
    assert errno_of(admin.load_model, str(tmp_path / "weights.gguf")) == "EINVAL"


def test_a_device_file_as_config_json_is_einval(admin, tmp_path):
    folder = tmp_path / "devmodel"
    folder.mkdir()
    (folder / "config.json").symlink_to("/dev/zero")
    assert errno_of(admin.load_model, str(folder)) == "EINVAL"


def test_a_huge_sparse_config_json_is_einval_and_never_read(admin, tmp_path):
    folder = tmp_path / "sparse"
    folder.mkdir()
    with open(folder / "config.json", "wb") as f:
        f.truncate(2 << 30)
    error = raised(admin.load_model, str(folder))
    assert error.errno == "EINVAL" and "config.json" in error.message


def test_a_name_longer_than_the_filesystem_allows_is_einval(admin):
    assert errno_of(admin.infer, prompt="x", max_tokens=1, model="m" * 5000) == "EINVAL"
    assert errno_of(admin.infer, prompt="x", max_tokens=1, model="/tmp/" + "m" * 300) == "EINVAL"


@pytest.fixture(scope="module")
def slow_load_kernel(tmp_path_factory):
    work = tmp_path_factory.mktemp("load-timeout")
    config = work / "config.toml"
    config.write_text("[limits]\nload_timeout_s = 2\n")
    k = KernelProcess(work, extra=["--config", str(config)], env={"LLMOS_NO_SERVICES": "1"}).start()
    yield k
    k.stop()


def test_a_load_past_its_time_limit_is_etimedout_and_releases_its_memory(slow_load_kernel, tiny_llama):
    with slow_load_kernel.client("loader") as c, slow_load_kernel.client("pinger") as other:
        assert wait_until(lambda: c.devices()[0]["driver"] == "up", timeout=60)
        before = c.devices()[0]["used_bytes"]
        driver = c.devices()[0]["os_pid"]
        os.kill(driver, signal.SIGSTOP)      # the driver can never answer the load
        outcome = {}
        loader = threading.Thread(target=lambda: outcome.update(errno=errno_of(c.load_model, tiny_llama)))
        try:
            loader.start()
            assert wait_until(lambda: any(m["name"] == tiny_llama for m in other.models()["loaded"]))
            assert other.ping()["pong"] is True          # the kernel serves others while the load waits
            loader.join(timeout=60)
        finally:
            os.kill(driver, signal.SIGCONT)
        assert outcome["errno"] == "ETIMEDOUT"
        assert c.devices()[0]["used_bytes"] == before
        assert all(m["name"] != tiny_llama for m in c.models()["loaded"])


@pytest.fixture(scope="module")
def model_kernel(tmp_path_factory, tiny_llama, tiny_bert):
    """A tcp kernel the operator booted with a model named by its path, and services."""
    k = KernelProcess(tmp_path_factory.mktemp("path-model"), model=tiny_llama, tcp=True,
                      env={"LLMOS_SERVICES_EMBED_MODEL": tiny_bert}).start()
    with k.client("op", caps=["admin"]) as op:
        k.user_key = op.user_add("pathless")["key_file"]
    yield k
    k.stop()


def test_a_user_may_use_the_model_the_operator_named_by_its_path(model_kernel, tiny_llama):
    with model_kernel.client("user-app", key=model_kernel.user_key) as c:
        assert c.infer(prompt="hello", max_tokens=2)["usage"]["completion_tokens"] >= 1
        assert c.infer(prompt="hello", max_tokens=2, model=tiny_llama)["usage"]["completion_tokens"] >= 1


def test_a_user_cannot_have_a_service_load_a_path_for_it(model_kernel, tmp_path):
    with model_kernel.client("user-app", key=model_kernel.user_key) as c:
        assert wait_until(lambda: c.svc_list()["host"]["state"] == "up", timeout=60)
        args = {"text": "hola amigo, como estas", "source": "es", "target": "en", "best_effort": True,
                "model": str(tmp_path)}
        assert errno_of(c.svc_call, "translate", "text", args) == "EPERM"
