"""A kernel on loopback tcp (CurveZMQ), its operator console, and users made through it; one that
generates (the tiny model) for the tests that need tokens."""

from __future__ import annotations

import itertools

import pytest

from harness import KernelProcess

_names = itertools.count()


@pytest.fixture(scope="module")
def tcp_kernel(tmp_path_factory):
    k = KernelProcess(tmp_path_factory.mktemp("tcp-kernel"), tcp=True, env={"LLMOS_NO_SERVICES": "1"}).start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def tcp_model_kernel(tmp_path_factory, tiny_llama):
    """A tcp kernel on the tiny model (no service host): for tests of what users' generations cost and show."""
    k = KernelProcess(tmp_path_factory.mktemp("tcp-model-kernel"), tcp=True, model=tiny_llama,
                      env={"LLMOS_NO_SERVICES": "1"}).start()
    yield k
    k.stop()


@pytest.fixture(scope="module")
def operator(tcp_kernel):
    with tcp_kernel.client("operator-console", caps=["admin", "ps", "mem"]) as c:
        yield c


@pytest.fixture
def make_user(operator):
    """make_user(caps=None, quotas=None) -> (name, key file); removed after the test."""
    made = []

    def make(caps=None, quotas=None):
        name = f"user{next(_names)}"
        info = operator.user_add(name, caps=caps, quotas=quotas)
        made.append(name)
        return name, info["key_file"]

    yield make
    for name in made:
        operator.user_remove(name)
