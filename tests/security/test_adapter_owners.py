"""An adapter belongs to the principal that trained it: another principal gets ENOENT for it (as if
it did not exist) until its owner shares it, and only its owner may share it."""

from __future__ import annotations

import pytest

from adapter_files import make_adapter
from harness import KernelProcess, errno_of


@pytest.fixture(scope="module")
def tcp_kernel(tmp_path_factory, tiny_llama):
    """The security tests' tcp kernel, with the tiny model named `tiny` and the operator's adapter tiny:mine."""
    root = tmp_path_factory.mktemp("adapter-owners")
    make_adapter(tiny_llama, root / "state", "mine", seed=7)
    config = root / "config.toml"
    config.write_text(f'[models.tiny]\npath = "{tiny_llama}"\n')
    k = KernelProcess(root / "k", model="tiny", state_dir=root / "state", tcp=True,
                      extra=["--config", str(config)], env={"LLMOS_NO_SERVICES": "1"}).start()
    yield k
    k.stop()


@pytest.fixture
def owner(tcp_kernel):
    """A program of the operator's, the adapter's owner."""
    with tcp_kernel.client("owner-app") as c:
        yield c


def test_another_principals_unshared_adapter_is_not_found_and_not_listed(tcp_kernel, owner, make_user):
    _, key = make_user()
    with tcp_kernel.client("app", key=key) as user:
        assert errno_of(user.infer, model="tiny:mine", prompt="hi", max_tokens=2) == "ENOENT"
        assert errno_of(user.load_model, "tiny:mine") == "ENOENT"
        assert user.adapters()["adapters"] == []
        assert errno_of(user.adapter_share, model="tiny:mine", shared=True) == "ENOENT"
    assert owner.infer(model="tiny:mine", prompt="hi", max_tokens=2)["usage"]["completion_tokens"] == 2


def test_a_shared_adapter_serves_other_principals_until_its_owner_stops_sharing_it(tcp_kernel, owner, make_user):
    _, key = make_user()
    with tcp_kernel.client("app", key=key) as user:
        owner.adapter_share(model="tiny:mine", shared=True)
        try:
            assert user.infer(model="tiny:mine", prompt="hi", max_tokens=2, temperature=0)["text"] == \
                owner.infer(model="tiny:mine", prompt="hi", max_tokens=2, temperature=0)["text"]
            [listed] = user.adapters()["adapters"]
            assert (listed["model"], listed["owner"], listed["shared"]) == ("tiny:mine", "operator", True)
            assert [m["name"] for m in user.models()["loaded"] if m["kind"] == "adapter"] == ["tiny:mine"]
        finally:
            owner.adapter_share(model="tiny:mine", shared=False)
        assert errno_of(user.infer, model="tiny:mine", prompt="hi", max_tokens=2) == "ENOENT"
        assert not [m for m in user.models()["loaded"] if m["kind"] == "adapter"]
