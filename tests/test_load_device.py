"""load_model on a device the kernel does not manage answers ENOENT, loaded or not: the device
is checked before the model table is."""

from __future__ import annotations

import shutil

from harness import raised


def test_a_loaded_model_asked_for_on_a_missing_device_is_enoent(kernel):
    with kernel.client("load-device") as c:
        error = raised(c.load_model, kernel.model, device="cuda:7")
    assert error.errno == "ENOENT" and "no device 'cuda:7'" in error.message


def test_a_model_not_loaded_asked_for_on_a_missing_device_is_enoent(kernel, tiny_bert, tmp_path):
    # A copy no other test loads: the kernel is shared, and other files load tiny_bert itself.
    model = str(shutil.copytree(tiny_bert, tmp_path / "never-loaded"))
    with kernel.client("load-device") as c:
        error = raised(c.load_model, model, device="cuda:7")
        assert model not in [m["name"] for m in c.models()["loaded"]]
    assert error.errno == "ENOENT" and "no device 'cuda:7'" in error.message
