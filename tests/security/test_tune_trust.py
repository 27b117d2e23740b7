"""Fine-tune jobs and principals: `tune` needs a capability users do not get by default; a job and
the adapter it writes are its principal's, and another principal sees neither."""

from __future__ import annotations

import pytest

from harness import KernelProcess, errno_of, wait_until

EXAMPLES = [{"prompt": "The capital of France is", "completion": " Paris."}] * 4


@pytest.fixture(scope="module")
def tcp_kernel(tmp_path_factory, tiny_llama):
    """The security tests' tcp kernel, with the tiny model named `tiny`."""
    root = tmp_path_factory.mktemp("tune-trust")
    config = root / "config.toml"
    config.write_text(f'[models.tiny]\npath = "{tiny_llama}"\n')
    k = KernelProcess(root / "k", model="tiny", tcp=True, extra=["--config", str(config)],
                      env={"LLMOS_NO_SERVICES": "1"}).start()
    yield k
    k.stop()


def test_a_user_with_the_default_caps_cannot_tune(tcp_kernel, make_user):
    _, key = make_user()
    with tcp_kernel.client("app", key=key) as user:
        assert errno_of(user.tune, base="tiny", name="nope", examples=EXAMPLES) == "EPERM"
    assert not (tcp_kernel.state_dir / "jobs").exists() or not any((tcp_kernel.state_dir / "jobs").iterdir())


def test_a_job_is_its_principals_and_writes_into_its_namespace(tcp_kernel, make_user):
    caps = ["ps", "tune", "infer", "models"]
    alice, alice_key = make_user(caps=caps)
    _, bob_key = make_user(caps=caps)
    with tcp_kernel.client("trainer", key=alice_key, caps=caps) as a, \
            tcp_kernel.client("other", key=bob_key, caps=caps) as b:
        job = a.tune(base="tiny", name="private", examples=EXAMPLES, epochs=1000)["job"]
        assert [j["job"] for j in a.jobs()["jobs"]] == [job]
        assert b.jobs()["jobs"] == []
        assert errno_of(b.job_cancel, job=job) == "ENOENT"      # not "not yours": it does not exist for bob
        assert a.job_cancel(job=job)["cancelled"]
        done = a.tune(base="tiny", name="private", examples=EXAMPLES, epochs=1)["job"]
        assert wait_until(lambda: a.jobs()["jobs"][-1]["state"] == "done", 120), a.jobs()
        assert a.jobs()["jobs"][-1]["job"] == done
    folder = tcp_kernel.state_dir / "adapters" / alice / "tiny" / "private"
    assert (folder / "adapter_model.safetensors").is_file()


def test_removing_a_user_cancels_its_jobs(tcp_kernel, operator):
    caps = ["ps", "tune", "infer", "models"]
    name = "leaver"
    key = operator.user_add(name, caps=caps)["key_file"]     # removed by the test itself, not make_user
    with tcp_kernel.client("trainer", key=key, caps=caps) as user:
        job = user.tune(base="tiny", name="long", examples=EXAMPLES, epochs=1000)["job"]
    operator.user_remove(name)

    def state() -> str:
        return next(j["state"] for j in operator.jobs()["jobs"] if j["job"] == job)

    assert wait_until(lambda: state() == "cancelled", 60), state()
