"""Shared fixtures: tiny models built once per session, and kernels booted for real."""

from __future__ import annotations

import os

import pytest

from llmos.userland.testing import KernelProcess, make_tiny_bert, make_tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The suite runs the torch runner everywhere, as CI (no llama-cpp-python) does, so a machine with the
# `llamacpp` extra passes and fails the same tests; tests/test_llamacpp_backend.py runs llama.cpp.
# LLMOS_CPU_BACKEND=auto python -m pytest runs the whole suite on llama.cpp where it is installed.
os.environ.setdefault("LLMOS_CPU_BACKEND", "torch")

REAL_MODEL_TIMEOUT_S = 900    # the first such test also waits for real_kernel's boot (up to 300 s)


def pytest_collection_modifyitems(items):
    """Every test is bounded by pyproject's timeout (300 s); a real_model one, unless it says
    otherwise, by REAL_MODEL_TIMEOUT_S."""
    for item in items:
        if item.get_closest_marker("real_model") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(REAL_MODEL_TIMEOUT_S))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def kernel(tmp_path_factory, tiny_llama) -> KernelProcess:
    """One kernel on the tiny model, shared by the tests that do not stop or break it."""
    k = KernelProcess(tmp_path_factory.mktemp("kernel"), model=tiny_llama).start()
    yield k
    k.stop()


@pytest.fixture
def fresh_kernel(tmp_path, tiny_llama):
    """A kernel of the test's own, for tests that kill, restart or fill it."""
    made = []

    def boot(**kw) -> KernelProcess:
        kw.setdefault("model", tiny_llama)
        k = KernelProcess(tmp_path / f"k{len(made)}", **kw).start()
        made.append(k)
        return k

    yield boot
    for k in made:
        k.stop()


@pytest.fixture(scope="session")
def real_kernel(tmp_path_factory) -> KernelProcess:
    """One kernel on the embedded default model (SmolLM2-135M-Instruct), shared by every real-model test."""
    k = KernelProcess(tmp_path_factory.mktemp("real-kernel"), model="smollm2-135m-instruct").start(timeout=300)
    yield k
    k.stop()
