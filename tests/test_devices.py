"""Device memory: admission, eviction of idle models, ENOMEM for what can never fit."""

import json
import shutil
import struct
import threading

import pytest

from harness import errno_of, raised, wait_until


@pytest.fixture
def small_device(fresh_kernel, tmp_path, tiny_llama):
    """A kernel whose cpu budget holds the boot model and one more tiny model, not two."""
    config = tmp_path / "llmos.toml"
    config.write_text('[device."cpu"]\nmemory = "170MiB"\nkv_cache = "64MiB"\n')
    return fresh_kernel(extra=["--config", str(config)])


def copy_model(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def fake_huge_model(path) -> str:
    """A folder whose safetensors header claims 100 GiB of weights (the kernel reads only headers)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [25 << 30], "data_offsets": [0, 0]}}).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return str(path)


def deep_copy_of(tiny: str, path, layers: int) -> str:
    """`tiny` with its first decoder layer repeated `layers` times: the driver builds and fills
    the layers one by one for seconds, where a short infer on `tiny` takes a fraction of that."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    shutil.copytree(tiny, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": layers}))
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    first = "model.layers.0."
    weights = {name: t for name, t in tensors.items() if not name.startswith("model.layers.")}
    for i in range(layers):
        weights.update({f"model.layers.{i}.{name[len(first):]}": t.clone()
                        for name, t in tensors.items() if name.startswith(first)})
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return str(path)


def loaded_row(c, name: str) -> dict:
    return next((m for m in c.models()["loaded"] if m["name"] == name), {})


def test_a_model_that_can_never_fit_fails_at_once_and_evicts_nothing(small_device, tmp_path, tiny_llama):
    second = copy_model(tiny_llama, tmp_path / "second")
    with small_device.client("loader") as c:
        c.load_model(second)
        c.unload_model(second)     # idle now: evictable, but the huge load must not evict it
        error = raised(c.load_model, fake_huge_model(tmp_path / "huge"))
        assert error.errno == "ENOMEM" and "never fit" in error.message
        assert second in [m["name"] for m in c.models()["loaded"]]


def test_loading_evicts_idle_models_to_make_room(small_device, tmp_path, tiny_llama):
    second = copy_model(tiny_llama, tmp_path / "second")
    third = copy_model(tiny_llama, tmp_path / "third")
    with small_device.client("loader") as c:
        c.load_model(second)
        error = raised(c.load_model, third)     # second is referenced: nothing to evict
        assert error.errno == "ENOMEM" and "free" in error.message
        c.unload_model(second)
        c.load_model(third)
        names = [m["name"] for m in c.models()["loaded"]]
        assert third in names and second not in names and tiny_llama in names
        (cpu,) = c.devices()
        assert cpu["used_bytes"] <= cpu["total_bytes"]


def test_alloc_gpu_is_admitted_against_models_and_evicts_idle_ones(small_device, tmp_path, tiny_llama):
    second = copy_model(tiny_llama, tmp_path / "second")
    with small_device.client("allocator") as c:
        c.load_model(second)
        free = c.devices()[0]["free_bytes"]
        assert errno_of(c.alloc_gpu, free + (40 << 20), device="cpu") == "ENOMEM"
        c.unload_model(second)
        r = c.alloc_gpu(free + (40 << 20), device="cpu")
        assert second not in [m["name"] for m in c.models()["loaded"]]
        c.free(r["handle"])


def test_evicting_a_model_someone_else_uses_is_ebusy(small_device, tmp_path, tiny_llama):
    second = copy_model(tiny_llama, tmp_path / "second")
    with small_device.client("a") as a, small_device.client("b") as b:
        a.load_model(second)
        b.load_model(second)
        assert errno_of(a.unload_model, second, evict=True) == "EBUSY"
        b.unload_model(second)
        assert a.unload_model(second, evict=True)["unloaded"] is True


def test_a_loaded_model_answers_while_another_model_is_still_loading(kernel, tmp_path, tiny_llama):
    deep = deep_copy_of(tiny_llama, tmp_path / "deep", layers=500)
    load = {}

    def load_deep():
        with kernel.client("loader") as c:
            load.update(c.load_model(deep))

    with kernel.client("user") as c:
        loader = threading.Thread(target=load_deep)
        loader.start()
        try:
            # Charged on the device (bytes > 0) means the driver has been sent the load.
            assert wait_until(lambda: loaded_row(c, deep).get("bytes", 0) > 0, timeout=60)
            assert c.infer(prompt="still here?", max_tokens=2)["usage"]["completion_tokens"] >= 1
            assert loaded_row(c, deep)["state"] == "loading"    # answered before that load ended
        finally:
            loader.join(120)
        assert load["name"] == deep and loaded_row(c, deep)["state"] == "ready"
        c.unload_model(deep, evict=True)     # the shared kernel's memory as it was


def test_the_kv_cache_in_use_is_reported_while_generating_and_freed_after(kernel):
    with kernel.client() as c:
        stream = c.stream(prompt="tell me a long story", max_tokens=200, temperature=0)
        next(iter(stream))
        during = c.stats()["devices"][0]["kv_usage"]
        "".join(stream)
        assert during is not None and 0 < during < 1
        assert wait_until(lambda: c.stats()["devices"][0]["kv_usage"] == 0)


def test_devices_added_after_boot_stop_at_their_bound():
    from llmos.kernel.devices import MAX_DEVICES, DeviceLimit, Devices
    from llmos.kernel.driverport import DriverPort

    devices = Devices(["cpu"], DriverPort(), requests=None, procs=None, max_running_per_process=4)
    for i in range(1, MAX_DEVICES):
        devices.add(f"cpu:{i}", node=f"node-{i}")
    with pytest.raises(DeviceLimit):
        devices.add(f"cpu:{MAX_DEVICES}", node="one-node-too-many")
    assert len(devices.names) == MAX_DEVICES and f"cpu:{MAX_DEVICES}" not in devices.schedulers


def test_every_message_a_driver_sends_has_a_handler_and_no_other():
    """DriverEvents.ON_MESSAGE is a table from message type to handler: it must name exactly what drivers/
    sends, less Hello and DriverFailed, which the supervisor takes before the table sees anything."""
    import ast
    from pathlib import Path

    from llmos.kernel.driverevents import DriverEvents

    drivers = Path(__file__).resolve().parents[1] / "drivers"
    sent = {node.func.attr for path in drivers.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "channel"
            and node.func.attr[:1].isupper()}
    assert sent - {"Hello", "DriverFailed"} == {t.__name__ for t in DriverEvents.ON_MESSAGE}


def test_a_driver_message_goes_to_its_handler_and_an_unexpected_one_is_logged():
    from types import SimpleNamespace

    from structlog.testing import capture_logs

    from llmos.kernel.config import Settings
    from llmos.kernel.driverevents import DriverEvents
    from llmos.kernel.supervisor import DriverHandle
    from llmos.specs import channel

    progressed = []
    models = SimpleNamespace(load_progress=lambda device, msg: progressed.append((device, msg)))
    events = DriverEvents(Settings(), None, None, models, None, None, None, None, metrics=None, fail_boot=print)
    drv = DriverHandle("cpu")
    update = channel.LoadProgress("tiny", "tokenizer")
    with capture_logs() as seen:
        events.on_message(drv, update)
        events.on_message(drv, channel.Unload("tiny"))      # the kernel's to send, never a driver's
    assert progressed == [("cpu", update)]
    assert [(e["event"], e["op"]) for e in seen] == [("driver.unexpected_message", "unload")]
