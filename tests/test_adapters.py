"""LoRA adapters per request: many adapters of one base share its weights and its batch.

In the engine: an adapter's greedy tokens are peft's merged model's; two adapters and the base in
one batch give what each gives alone. Through a kernel: BASE:NAME loads the adapter over its base,
counted in device memory, shown in `models` and `devices`; a broken adapter is refused clearly and
leaves nothing charged. (Another principal's adapter: tests/security/test_adapter_owners.py.)
"""

from __future__ import annotations

import json
import threading

import pytest

from adapter_files import adapter_files, make_adapter, merged_greedy
from harness import raised
from llmos.drivers.engine import Engine, GenRequest
from llmos.drivers.loader import encode_prompt, load
from llmos.kernel import registry

PROMPT = "The cat sat on the"
N = 12


@pytest.fixture(scope="module")
def adapters(tiny_llama, tmp_path_factory):
    """Two adapters of the tiny model (a on q and v, b on every projection), in a state dir of their own."""
    state = tmp_path_factory.mktemp("adapters-state")
    a = make_adapter(tiny_llama, state, "a", seed=1)
    b = make_adapter(tiny_llama, state, "b", seed=2,
                     targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    return {"a": a, "b": b}


@pytest.fixture(scope="module")
def lm(tiny_llama):
    return load(registry.resolve(tiny_llama))


def greedy(rid: int, prompt_ids: list[int]) -> GenRequest:
    return GenRequest(rid=rid, prompt_ids=prompt_ids, max_tokens=N, temperature=0.0, top_p=1.0, top_k=0, stop=[],
                      seed=0, ignore_eos=True)


def generate(engine: Engine, prompt_ids: list[int], adapters: list[str]) -> list[list[int]]:
    """Token ids of one greedy request per adapter ("" the base), all added before the first step."""
    out: dict[int, list[int]] = {}
    for rid, adapter in enumerate(adapters):
        engine.add(greedy(rid, prompt_ids))
        engine.runner.use_adapter(rid, adapter)
        out[rid] = []
    while engine.has_work():
        for ev in engine.step():
            out[ev.rid] += ev.token_ids
    return [out[rid] for rid in range(len(adapters))]


def engine_with(lm, adapters) -> Engine:
    engine = Engine(lm, kv_budget_bytes=8 << 20)
    for name, folder in adapters.items():
        assert engine.runner.load_adapter(name, adapter_files(folder)) > 0
    return engine


def test_an_adapters_greedy_tokens_are_peft_merged_models(lm, tiny_llama, adapters):
    prompt_ids = encode_prompt(lm, PROMPT, None)
    engine = engine_with(lm, adapters)
    for name in ("a", "b"):
        [served] = generate(engine, prompt_ids, [name])
        assert served == merged_greedy(tiny_llama, adapters[name], prompt_ids, N), name


def test_two_adapters_and_the_base_in_one_batch_give_what_each_gives_alone(lm, adapters):
    prompt_ids = encode_prompt(lm, PROMPT, None)
    engine = engine_with(lm, adapters)
    alone = [generate(engine, prompt_ids, [name])[0] for name in ("a", "b", "")]
    together = generate(engine, prompt_ids, ["a", "b", ""])
    assert together == alone
    assert alone[0] != alone[2] and alone[1] != alone[2]


def test_an_adapter_of_other_shapes_or_dora_is_refused_whole(lm, adapters):
    from safetensors.torch import load as load_tensors, save

    files = adapter_files(adapters["a"])
    config = json.loads(files["adapter_config.json"])
    engine = Engine(lm, kv_budget_bytes=8 << 20)
    tensors = load_tensors(files["adapter_model.safetensors"])
    last = sorted(tensors)[-1]
    tensors[last] = tensors[last][:, :-1].contiguous()     # one projection's A or B a column short
    with pytest.raises(ValueError, match="an adapter of another base"):
        engine.runner.load_adapter("bad", {**files, "adapter_model.safetensors": save(tensors)})
    assert not engine.runner.has_adapter("bad")
    assert all(not w.weights for w in (engine.runner.lora.modules.values() if engine.runner.lora else []))
    config["use_dora"] = True
    with pytest.raises(ValueError, match="DoRA"):
        engine.runner.load_adapter("dora", {**files, "adapter_config.json": json.dumps(config).encode()})


# -- through a kernel ------------------------------------------------------------------------------

@pytest.fixture
def adapter_kernel(fresh_kernel, tiny_llama, tmp_path):
    """A float32 kernel whose config names the tiny model `tiny`, with adapters tiny:a and tiny:b
    (the operator's) and three broken ones in its state dir."""
    state = tmp_path / "state"
    make_adapter(tiny_llama, state, "a", seed=1)
    make_adapter(tiny_llama, state, "b", seed=2, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    (make_adapter(tiny_llama, state, "missing", seed=3) / "adapter_model.safetensors").unlink()
    other = make_adapter(tiny_llama, state, "elsewhere", seed=4)
    meta = json.loads((other / "llmos.json").read_text())
    (other / "llmos.json").write_text(json.dumps({**meta, "base": "smollm2-135m-instruct"}))
    make_adapter(tiny_llama, state, "wide", seed=5)      # made wider below: shapes of another base
    wide = state / "adapters" / "operator" / "tiny" / "wide" / "adapter_model.safetensors"
    from safetensors.torch import load_file, save_file
    tensors = load_file(wide)
    save_file({k: (t.repeat(1, 2) if k.endswith("lora_A.weight") else t) for k, t in tensors.items()}, wide)
    config = tmp_path / "config.toml"
    config.write_text(f'[models.tiny]\npath = "{tiny_llama}"\n')
    return fresh_kernel(model="tiny", state_dir=state, extra=["--config", str(config), "--dtype", "float32"],
                        env={"LLMOS_NO_SERVICES": "1"})


def infer_text(client, model: str) -> str:
    return client.infer(model=model, prompt=PROMPT, max_tokens=N, temperature=0)["text"]


def test_adapters_and_their_base_served_at_once_give_what_each_gives_alone(adapter_kernel):
    models = ["tiny:a", "tiny:b", "tiny"]
    with adapter_kernel.client() as c:
        alone = [infer_text(c, m) for m in models]
    together: dict[str, str] = {}

    def run(model: str) -> None:
        with adapter_kernel.client(f"app-{model}") as c:
            together[model] = "".join(c.stream(model=model, prompt=PROMPT, max_tokens=N, temperature=0))

    threads = [threading.Thread(target=run, args=(m,)) for m in models for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a stream did not end within 120 s"
    assert [together[m] for m in models] == alone
    assert alone[0] != alone[2] and alone[1] != alone[2]


def test_an_answer_names_the_adapter_it_ran_with(adapter_kernel):
    with adapter_kernel.client() as c:
        assert c.infer(model="tiny:a", prompt=PROMPT, max_tokens=2)["model"] == "tiny:a"
        assert c.infer(model="tiny", prompt=PROMPT, max_tokens=2)["model"] == "tiny"


def test_a_loaded_adapter_shows_in_models_and_its_bytes_in_devices(adapter_kernel):
    with adapter_kernel.client() as c:
        before = c.devices()[0]["models_bytes"]
        loaded = c.load_model("tiny:a")
        assert loaded["bytes"] > 0 and loaded["name"] == "tiny:a"
        [row] = [m for m in c.models()["loaded"] if m["kind"] == "adapter"]
        assert (row["name"], row["base"], row["bytes"], row["state"]) == ("tiny:a", "tiny", loaded["bytes"], "ready")
        assert c.devices()[0]["models_bytes"] == before + loaded["bytes"]
        listed = {a["model"]: a for a in c.adapters()["adapters"]}
        assert listed["tiny:a"]["loaded"][0]["bytes"] == loaded["bytes"] and listed["tiny:b"]["loaded"] == []


@pytest.mark.parametrize("name, errno, says", [
    ("tiny:missing", "EINVAL", "adapter_model.safetensors is missing"),
    ("tiny:elsewhere", "EINVAL", "trained on 'smollm2-135m-instruct'"),
    ("tiny:wide", "EINVAL", "an adapter of another base"),
    ("tiny:nobody", "ENOENT", "no adapter 'tiny:nobody' that you may use"),
])
def test_a_broken_or_unknown_adapter_is_refused_clearly_and_leaves_nothing_charged(adapter_kernel, name, errno, says):
    with adapter_kernel.client() as c:
        before = c.devices()[0]["models_bytes"]
        error = raised(c.infer, model=name, prompt=PROMPT, max_tokens=2)
        assert (error.errno, says in str(error)) == (errno, True), str(error)
        assert c.devices()[0]["models_bytes"] == before
        assert not [m for m in c.models()["loaded"] if m["kind"] == "adapter"]
        assert infer_text(c, "tiny")       # the base still serves


def test_cached_prompt_blocks_are_shared_only_under_the_same_adapter():
    """The prefix cache keys blocks by the cache salt: one adapter's keys and values are another's wrong ones."""
    from types import SimpleNamespace

    from llmos.kernel.devices import Devices

    devices = SimpleNamespace(procs={})
    salt = {adapter: Devices._cache_salt(devices, SimpleNamespace(share=1, principal="alice", payload={"adapter": adapter}))
            for adapter in ("", "alice/tiny:a", "alice/tiny:b")}
    assert len(set(salt.values())) == 3
    assert salt[""] == "alice"


# -- the adapter table: what may be evicted --------------------------------------------------------

def adapter_table(tmp_path, requests):
    """An AdapterTable with no bases loaded, a cpu account of 1000 bytes and these requests in flight."""
    from llmos.kernel.adapters import AdapterTable
    from llmos.kernel.devmem import DeviceMemory
    from llmos.kernel.driverport import DriverPort

    memory = DeviceMemory()
    memory.add_device("cpu", "cpu", 1000)
    return AdapterTable(bases=None, devices=None, devmem=memory, drivers=DriverPort(), requests=requests,
                        state_dir=tmp_path, load_timeout_s=60)


def loaded_adapter(table, name: str, last_used: float, base: str = "tiny"):
    from llmos.kernel.adapters import AdapterEntry
    from llmos.kernel.adapters import AdapterInfo
    from llmos.specs import channel

    info = AdapterInfo("alice", base, name, table.store.root / "alice" / base / name, {"base": base})
    entry = table._entries[(info.id, "cpu")] = AdapterEntry(info, "cpu", last_used=last_used)
    table.loaded("cpu", channel.AdapterLoaded(base, info.id, 100))
    return entry


async def test_an_adapter_with_a_request_in_flight_is_never_evicted_and_idle_ones_go_least_recent_first(tmp_path):
    from types import SimpleNamespace

    from llmos.kernel.placement import eviction_victims

    table = adapter_table(tmp_path, [SimpleNamespace(payload={"adapter": "alice/tiny:busy"}, device="cpu")])
    newer, busy, older = (loaded_adapter(table, n, t) for n, t in (("newer", 3.0), ("busy", 1.0), ("older", 2.0)))
    assert table.devmem.devices["cpu"].models_bytes == 300
    assert eviction_victims(table.entries(), "cpu", need=50, free=0) == [older]
    assert eviction_victims(table.entries(), "cpu", need=150, free=0) == [older, newer]
    assert eviction_victims(table.entries(), "cpu", need=250, free=0) is None
    assert busy.in_use == 1


async def test_unloading_a_base_drops_its_adapters_and_their_charge(tmp_path):
    table = adapter_table(tmp_path, [])
    loaded_adapter(table, "a", 1.0)
    other = loaded_adapter(table, "b", 1.0, base="other")
    table.base_gone("tiny", "cpu")
    assert table.entries() == [other]
    assert table.devmem.devices["cpu"].models_bytes == 100


def test_a_retrained_adapter_serves_its_new_version(adapter_kernel, tiny_llama):
    with adapter_kernel.client() as c:
        first = infer_text(c, "tiny:a")
        folder = make_adapter(tiny_llama, adapter_kernel.state_dir / "retrain", "a", seed=11)
        meta = json.loads((folder / "llmos.json").read_text())
        (folder / "llmos.json").write_text(json.dumps({**meta, "version": 2}))
        folder.rename(adapter_kernel.state_dir / "adapters" / "operator" / "tiny" / "a.new")
        live = adapter_kernel.state_dir / "adapters" / "operator" / "tiny"
        (live / "a").rename(live / "a.old")
        (live / "a.new").rename(live / "a")
        assert infer_text(c, "tiny:a") != first
        assert [a["version"] for a in c.adapters()["adapters"] if a["model"] == "tiny:a"] == [2]
