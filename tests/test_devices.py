"""Device memory: admission, eviction of idle models, ENOMEM for what can never fit."""

import json
import shutil
import struct
import threading

import pytest

from harness import errno_of, raised


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


def test_loading_one_model_does_not_hold_up_requests_to_another(fresh_kernel, tmp_path, tiny_llama):
    k = fresh_kernel()
    slow = copy_model(tiny_llama, tmp_path / "slow")
    done = {}

    def load():
        with k.client("loader") as c:
            done["load"] = c.load_model(slow)

    with k.client("user") as c:
        t = threading.Thread(target=load)
        t.start()
        answers = 0
        while t.is_alive() and answers < 50:
            c.infer(prompt="still here?", max_tokens=2)   # served while the other model loads
            answers += 1
        t.join(120)
    assert done["load"]["name"] == slow and answers >= 1
