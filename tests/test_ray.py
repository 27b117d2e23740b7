"""Drivers on a Ray cluster (`llmos boot --ray ADDRESS`).

Most tests share a cluster of a head and a second node (one CPU each), each a `ray start` process
tree of its own on its own loopback address (tests/ray_nodes.py), that this module starts and
kills, and a real kernel booted against it with the tiny model: each node gets one CPU driver actor
(cpu:1, cpu:2 after the kernel's own cpu) that connects back over tcp with a CurveZMQ key of its
own. A driver actor that is killed, or a node whose processes are all killed, is a driver crash to
the kernel, and the stream it ran finishes with the text of an undisturbed run; a node that joins
adds a device. The tests at the end need no Ray: settings, and the keys (a driver's opens only the
driver socket, a client's only the client socket, a driver only its own device).
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from harness import raised, wait_until
from ray_nodes import RayNodes
from llmos.userland.testing import KernelProcess, make_tiny_llama

PROMPT = "Once upon a time, in a land far away, there lived"
HEAD_IP = "127.0.0.2"
NODE_IPS = (f"127.0.0.{n}" for n in itertools.count(3))   # each node Ray starts: a loopback address of its own
LONG = 400      # tokens: the tiny model writes them slower than Ray takes to kill an actor


@pytest.fixture(scope="module")
def cluster():
    """A head and one more node, one CPU each, each its own `ray start` process tree (ray_nodes.py);
    everything Ray started is gone after the module."""
    ray = pytest.importorskip("ray")
    nodes = RayNodes()
    try:
        # Loopback only: Ray advertises the machine's routable address unless each node is given its own
        # 127.0.0.x (the kernel joins at its driver socket's address, [ray] listen)
        nodes.start_head(HEAD_IP, num_cpus=1)
        ray.init(address=nodes.address, _node_ip_address=HEAD_IP, logging_level="warning")   # this process too, to kill actors
        nodes.add_node(next(NODE_IPS), num_cpus=1, resources={"llmos-worker": 1})
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()


@pytest.fixture(scope="module")
def ray_kernel(cluster, tmp_path_factory):
    one_thread = {"OMP_NUM_THREADS": "1"}    # the local driver as Ray runs its actors: 2 cores, 4 drivers
    # float32: in bfloat16 the default model's resumed text parts from the undisturbed one (a prefill
    # of prompt and tokens so far is not bit-equal to decoding them one by one)
    work = tmp_path_factory.mktemp("ray-kernel")
    config = work / "config.toml"
    config.write_text(f'[ray]\nlisten = "{HEAD_IP}:0"\n')
    k = KernelProcess(work, env={"LLMOS_NO_SERVICES": "1", **one_thread},
                      extra=["--ray", cluster.address, "--dtype", "float32", "--config", str(config)]).start()
    try:
        with k.client("watcher") as c:
            assert wait_until(lambda: _states(c) == {"cpu": "up", "cpu:1": "up", "cpu:2": "up"}, 120), _states(c)
        yield k
    finally:
        k.stop()


def _states(c) -> dict[str, str]:
    return {d["name"]: d["driver"] for d in c.devices()}


def _pid(c, device: str) -> int | None:
    """The process id its driver said hello with: a new one is a new actor."""
    return next(d["os_pid"] for d in c.devices() if d["name"] == device)


def _alive_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


@pytest.fixture
def model_on(ray_kernel, tmp_path):
    """model_on(device, replicas=1, model=None): a model (by default a tiny one of the test's own),
    its first copy on `device`;
    unloaded after the test, so each device holds one model when a test kills its driver (a
    restarted driver reloads its models on parallel threads, and two transformers loads at once
    in one process fail today with "Cannot copy out of meta tensor")."""
    made = []

    def load(device: str, replicas: int = 1, model: str | None = None) -> str:
        model = model or make_tiny_llama(tmp_path / f"model{len(made)}")
        made.append(model)
        with ray_kernel.client("loader", caps=["admin", "load"]) as c:
            c.load_model(name=model, device=device)
            if replicas > 1:
                c.load_model(name=model, replicas=replicas)
        return model

    yield load
    with ray_kernel.client("unloader") as c:
        loaded = {m["name"] for m in c.models()["loaded"]}     # a copy on a device gone down is gone
        for model in loaded.intersection(made):
            c.unload_model(name=model, evict=True)


def _driver_actor(kernel_pid: int, device: str):
    """The live actor that runs `device`'s driver for the kernel (named llmos-PID-DEVICE-LAUNCH)."""
    import ray

    prefix = f"llmos-{kernel_pid}-{device}-"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
    return ray.get_actor(max(names, key=lambda n: int(n.rsplit("-", 1)[1])), namespace="llmos")


def _stream_while(c, model: str, disturb) -> str:
    """Stream a greedy generation, call disturb() after its first text, read it to its end."""
    stream = c.stream(prompt=PROMPT, model=model, max_tokens=LONG, temperature=0)
    chunks = iter(stream)
    text = next(chunks)
    disturb()
    text += "".join(chunks)
    assert text == stream.result["text"]
    return text


# -- placement -------------------------------------------------------------------------------------

def test_the_cluster_and_the_driver_socket_stay_on_loopback(cluster, ray_kernel):
    import ray
    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} <= {f"127.0.0.{i}" for i in range(2, 255)}
    (socket,) = ray_kernel.events("ray.driver_socket")
    assert socket["bound"].startswith(f"tcp://{HEAD_IP}:") and socket["connect"].startswith(f"tcp://{HEAD_IP}:")


def test_each_node_gets_a_driver_named_after_the_local_devices_with_its_node(cluster, ray_kernel):
    with ray_kernel.client() as c:
        devices = {d["name"]: d for d in c.devices()}
    assert sorted(devices) == ["cpu", "cpu:1", "cpu:2"]
    assert "node" not in devices["cpu"]                     # the kernel's own driver
    assert {devices["cpu:1"]["node"], devices["cpu:2"]["node"]} == _alive_nodes()
    assert all(devices[d]["kind"] == "cpu" for d in devices)


def test_a_generation_runs_through_a_ray_driver(ray_kernel, model_on):
    model = model_on("cpu:1")
    with ray_kernel.client() as c:
        copies = [m["device"] for m in c.models()["loaded"] if m["name"] == model]
        out = c.infer(prompt=PROMPT, model=model, max_tokens=16, temperature=0)
    assert copies == ["cpu:1"]      # its one copy: the generation can only have run there
    assert out["usage"]["completion_tokens"] == 16 and out["text"]


def test_a_stream_whose_driver_actor_is_killed_finishes_with_the_undisturbed_text(ray_kernel, model_on):
    import ray

    model = model_on("cpu:1")
    with ray_kernel.client() as c:
        undisturbed = c.infer(prompt=PROMPT, model=model, max_tokens=LONG, temperature=0)["text"]
        first = _pid(c, "cpu:1")
        text = _stream_while(c, model, lambda: ray.kill(_driver_actor(ray_kernel.proc.pid, "cpu:1")))
        assert wait_until(lambda: _pid(c, "cpu:1") not in (None, first), 120), "the kernel launches a new actor"
    assert text == undisturbed
    assert [e for e in ray_kernel.events("request.requeued") if e["died"] == "cpu:1"], "it died mid-stream"


def test_the_default_model_resumes_on_the_restarted_ray_driver_with_the_same_text(ray_kernel, model_on):
    """The real SmolLM2-135M-Instruct, whose greedy choices are far from ties: the text must match."""
    import ray

    from llmos.specs.modelspec import DEFAULT_MODEL

    model = model_on("cpu:1", model=DEFAULT_MODEL)
    with ray_kernel.client() as c:
        undisturbed = c.infer(prompt=PROMPT, model=model, max_tokens=48, temperature=0)["text"]
        first = _pid(c, "cpu:1")
        stream = c.stream(prompt=PROMPT, model=model, max_tokens=48, temperature=0)
        chunks = iter(stream)
        text = next(chunks)
        ray.kill(_driver_actor(ray_kernel.proc.pid, "cpu:1"))
        text += "".join(chunks)
        assert wait_until(lambda: _pid(c, "cpu:1") not in (None, first), 120)
    assert text == undisturbed and len(undisturbed) > 40


def test_a_node_that_leaves_takes_its_device_down_and_its_stream_finishes_on_a_replica(cluster, ray_kernel, model_on):
    second = next(iter(cluster.worker_nodes))
    with ray_kernel.client() as c:
        leaving = next(d["name"] for d in c.devices() if d.get("node") == second.node_id)
        model = model_on(leaving, replicas=2)     # its copy there first, so an idle kernel picks it
        undisturbed = c.infer(prompt=PROMPT, model=model, max_tokens=LONG, temperature=0)["text"]
        text = _stream_while(c, model, lambda: cluster.remove_node(second))
        assert wait_until(lambda: _states(c)[leaving] == "down", 60), _states(c)
        copies = {m["device"]: m["state"] for m in c.models()["loaded"] if m["name"] == model}
    assert text == undisturbed
    assert leaving not in copies and "ready" in copies.values()
    assert ray_kernel.events("request.requeued")[-1]["died"] == leaving
    assert "left the Ray cluster" in _down_reason(ray_kernel, leaving)     # at once, not after 5 crashes


def test_a_node_that_joins_adds_a_device(cluster, ray_kernel):
    node = cluster.add_node(next(NODE_IPS), num_cpus=1)
    with ray_kernel.client() as c:
        assert wait_until(lambda: _states(c).get("cpu:3") == "up", 120), _states(c)
        devices = {d["name"]: d for d in c.devices()}
    assert devices["cpu:3"]["node"] == node.node_id


def test_a_stream_whose_only_copy_was_on_a_node_that_leaves_ends_with_eio(cluster, ray_kernel, model_on):
    joined = next(n for n in cluster.worker_nodes)     # the node the test before added
    with ray_kernel.client() as c:
        device = next(d["name"] for d in c.devices() if d.get("node") == joined.node_id)
        model = model_on(device)
        error = raised(_stream_while, c, model, lambda: cluster.remove_node(joined))
        assert _states(c)[device] == "down"
    assert error.errno == "EIO" and "left the Ray cluster" in str(error)


def _down_reason(k, device: str) -> str:
    return next(e["reason"] for e in reversed(k.events("driver.down")) if e["device"] == device)


# -- settings: Ray only when asked -----------------------------------------------------------------

def test_a_kernel_without_ray_never_imports_it():
    code = "import sys, llmos.kernel.kernel, llmos.kernel.__main__; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_ray_section_sets_the_drivers_and_the_flag_its_address(tmp_path):
    from llmos.kernel.config import RaySettings, load

    config = tmp_path / "config.toml"
    config.write_text('[ray]\naddress = "10.0.0.1:6379"\nnum_gpus_per_driver = 0.5\nlisten = "0.0.0.0:0"\n')
    assert load({"config": str(config)}, env={}).ray == RaySettings("10.0.0.1:6379", "0.0.0.0:0", 0.5, 1.0)
    assert load({"config": str(config), "ray": "auto"}, env={}).ray.address == "auto"


@pytest.mark.parametrize("line", ['adress = "10.0.0.1:6379"', "num_cpus_per_driver = 0", 'listen = "nowhere"'])
def test_a_ray_section_that_cannot_work_is_refused_naming_it(tmp_path, line):
    from llmos.kernel.config import ConfigError, load

    config = tmp_path / "config.toml"
    config.write_text(f"[ray]\n{line}\n")
    with pytest.raises(ConfigError, match=r"\[ray\]"):
        load({"config": str(config)}, env={})


# -- keys: a driver's opens only the driver socket, a client's only the client socket ----------------

async def _knock(state_dir: Path, socket: str, holder: str) -> str:
    """A DEALER with `holder`'s key ("user" or "driver") sends a frame to a kernel's `socket`
    ("clients" or "drivers"), both behind the kernel's one ZAP handler: 'delivered' or 'refused'."""
    from llmos.kernel.auth import DriverKeys, PrincipalAuthenticator, secure
    from llmos.kernel.config import DEFAULT_CAPS, GRANTABLE_CAPS
    from llmos.kernel.principals import PrincipalTable
    from llmos.specs.keys import read_key_file

    ctx = zmq.asyncio.Context()
    refused = asyncio.get_running_loop().create_future()
    table = PrincipalTable(state_dir, GRANTABLE_CAPS, DEFAULT_CAPS)
    table.load()
    user = read_key_file(table.add("alice", None, {}, "tcp://127.0.0.1:1")[1])
    drivers = DriverKeys(on_denied=lambda key: refused.done() or refused.set_result(key))
    keys = {"user": (user["public-key"], user["secret-key"]), "driver": drivers.issue("cpu:1")}
    auth = PrincipalAuthenticator(ctx, table, lambda key: refused.done() or refused.set_result(key), drivers)
    auth.start()
    server, client = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        if socket == "clients":
            secure(server, "tcp://127.0.0.1:0", table)
            server_key = table.kernel_public
        else:
            drivers.secure(server)
            server_key = drivers.server_public
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client.curve_publickey, client.curve_secretkey = (k.encode() for k in keys[holder])
        client.curve_serverkey = server_key.encode()
        client.connect(f"tcp://127.0.0.1:{port}")
        await client.send(b"knock")
        received = asyncio.ensure_future(server.recv_multipart())
        done, _ = await asyncio.wait([received, refused], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        received.cancel()
        if refused in done:
            assert refused.result() == keys[holder][0]
            return "refused"
        return "delivered" if received in done else "no answer"
    finally:
        client.close(0)
        server.close(0)
        auth.stop()
        ctx.term()


@pytest.mark.parametrize("socket, holder, outcome", [
    ("clients", "user", "delivered"), ("clients", "driver", "refused"),
    ("drivers", "driver", "delivered"), ("drivers", "user", "refused"),
])
def test_a_key_opens_only_its_own_socket(tmp_path, socket, holder, outcome):
    assert asyncio.run(_knock(tmp_path / "state", socket, holder)) == outcome


class _KeyOnly:
    """A Launcher that starts nothing: it issues the launch's key, and the test plays the driver."""

    node = "test-node"

    def __init__(self, keys):
        self.keys = keys
        self.issued: dict[str, tuple[str, str]] = {}

    async def launch(self, drv):
        public, secret = self.issued[drv.device] = self.keys.issue(drv.device)
        drv.proof = public
        return _Waiting()


class _Waiting:
    pid = returncode = None

    def __init__(self):
        self.killed = asyncio.Event()

    def kill(self):
        self.killed.set()

    async def wait(self) -> int:
        await self.killed.wait()
        return -9


async def _hello_as(tmp: Path, device: str, key_of: str) -> dict[str, str]:
    """A driver with the key issued for `key_of` says hello as `device` on the tcp driver socket of a
    supervisor of two remote devices; the states of both once the supervisor has judged it."""
    import structlog.testing

    from llmos.kernel.auth import DriverKeys, PrincipalAuthenticator
    from llmos.kernel.principals import PrincipalTable
    from llmos.kernel.supervisor import Supervisor
    from llmos.specs import channel

    ctx = zmq.asyncio.Context()
    keys = DriverKeys()
    auth = PrincipalAuthenticator(ctx, PrincipalTable(tmp / "state", (), ()), lambda key: None, keys)
    auth.start()
    judged = asyncio.Event()

    async def up(drv):
        judged.set()

    sup = Supervisor(ctx, f"ipc://{tmp}/drivers.sock", lambda drv, msg: None, _noop, up, on_failed=_noop)
    launcher = _KeyOnly(keys)
    driver = ctx.socket(zmq.DEALER)
    try:
        with structlog.testing.capture_logs() as logged:
            await sup.start([])
            for name in ("cpu:1", "cpu:2"):
                await sup.add(name, launcher)
            endpoint = sup.listen_tcp("tcp://127.0.0.1:*", keys.secure)
            driver.identity = device.encode()
            driver.curve_publickey, driver.curve_secretkey = (k.encode() for k in launcher.issued[key_of])
            driver.curve_serverkey = keys.server_public.encode()
            driver.connect(endpoint)
            hello = channel.Hello(device=device, pid=1, kind="cpu", total_bytes=1 << 30, free_bytes=1 << 30,
                                  dtype="float32", max_seqs=4)
            await driver.send(channel.encode(hello))

            async def judged_or_dropped():
                while not judged.is_set() and not any(e["event"] == "driver.not_its_child" for e in logged):
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(judged_or_dropped(), 30)
            return {name: drv.state for name, drv in sup.drivers.items()}
    finally:
        driver.close(0)
        for drv in sup.drivers.values():
            drv.proc.kill()         # the make-believe children end at once
        await sup.close()
        auth.stop()
        ctx.term()


async def _noop(*args):
    pass


def test_a_driver_is_taken_for_the_device_its_key_was_issued_for(tmp_path):
    assert asyncio.run(_hello_as(tmp_path, "cpu:1", key_of="cpu:1")) == {"cpu:1": "up", "cpu:2": "starting"}


def test_a_driver_claiming_another_devices_name_is_dropped(tmp_path):
    assert asyncio.run(_hello_as(tmp_path, "cpu:2", key_of="cpu:1")) == {"cpu:1": "starting", "cpu:2": "starting"}
