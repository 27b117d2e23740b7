"""The service host: plugins, svc_list / svc_call / svc_reload, and every way a plugin can fail.

A kernel on the tiny model loads the test plugins in tests/data/plugins (through
LLMOS_SERVICES_PATH and LLMOS_PLUGIN_MODULES; LLMOS_PLUGINS="" keeps out whatever is installed on
the machine), and the built-in services embed with the tiny BERT. The example plugin is
pip-installed into a temporary --target directory, never into the environment.
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness import KernelProcess, errno_of, wait_until
from llmos.services import Task, hookimpl, plugins
from llmos.specs import ArgError
from llmos.userland import LLMOSError

DATA = Path(__file__).resolve().parent / "data"
EXAMPLE_PLUGIN = Path(__file__).resolve().parent.parent / "examples" / "llmos-plugin-echo"
BUILTINS = {"summarize", "classify", "translate", "redact", "moderate", "kb", "support", "voice"}


def plugin_env(tiny_bert: str, **extra) -> dict:
    env = {"LLMOS_SERVICES_PATH": str(DATA / "plugins"), "LLMOS_PLUGIN_MODULES": "misbehave,broken_plugin",
           "LLMOS_SERVICES_EMBED_MODEL": tiny_bert,
           "LLMOS_PLUGINS": ""}          # no entry points: never what happens to be installed on the machine
    env.update(extra)
    return env


def host_up(client) -> dict:
    assert wait_until(lambda: client.svc_list()["host"]["state"] == "up", timeout=30)
    return client.svc_list()


def in_flight(client) -> int:
    return client.svc_list()["host"]["in_flight"]


@pytest.fixture(scope="module")
def svc_kernel(tmp_path_factory, tiny_llama, tiny_bert):
    k = KernelProcess(tmp_path_factory.mktemp("svc-kernel"), model=tiny_llama, env=plugin_env(tiny_bert)).start()
    with k.client("svc-waiter") as c:
        host_up(c)
    yield k
    k.stop()


@pytest.fixture
def client(svc_kernel, request):
    with svc_kernel.client(request.node.name[:60]) as c:
        host_up(c)
        yield c


# -- the plugin manager, in process: fakes on a real plugin manager ------------------------------

class FakePlugin:
    @hookimpl
    def register_services(self, register):
        register("fake", {"hello": Task(lambda ctx, who: {"text": f"hello {who}"}, "Greet.",
                                        args={"who": {"type": "str", "max_len": 10},
                                              "tone": {"type": "str", "default": "warm", "choices": ["warm", "dry"]}})},
                 description="A fake.")


def test_a_registered_plugin_becomes_a_service_with_its_schema():
    pm = plugins.plugin_manager()
    pm.register(FakePlugin(), name="fake-plugin")
    try:
        catalog = plugins.build_catalog(pm)
        entry = catalog.services["fake"]
        assert entry.plugin == "fake-plugin" and entry.description == "A fake."
        schema = entry.tasks["hello"].schema
        assert schema.validate({"who": "bob"}) == {"who": "bob", "tone": "warm"}
        described = entry.describe()["tasks"][0]["args"]
        assert described["who"]["required"] and described["tone"]["choices"] == ["warm", "dry"]
        for bad in ({}, {"who": 3}, {"who": "x" * 11}, {"who": "a", "tone": "hot"}, {"who": "a", "extra": 1}):
            with pytest.raises(ArgError):
                schema.validate(bad)
    finally:
        pm.unregister(name="fake-plugin")


def test_the_first_plugin_to_register_a_name_keeps_it_and_the_second_is_reported():
    pm = plugins.plugin_manager()
    pm.register(FakePlugin(), name="first")
    pm.register(FakePlugin(), name="second")
    try:
        catalog = plugins.build_catalog(pm)
        assert catalog.services["fake"].plugin == "first"
        assert catalog.failed[0]["plugin"] == "second" and "already registered by plugin 'first'" in catalog.failed[0]["error"]
    finally:
        pm.unregister(name="first")
        pm.unregister(name="second")


@pytest.mark.parametrize("tasks, message", [
    ({"t": "not a task"}, "must be a llmos.services.Task"),
    ({"t": Task(lambda ctx: 1, args={"x": {"type": "strr"}})}, "unknown type"),
    ({"t": Task(lambda ctx: 1, args={"x": {"type": "str", "maxlen": 3}})}, "unknown schema key"),
    ({"Bad Name": Task(lambda ctx: 1)}, "task name"),
])
def test_a_malformed_registration_fails_only_that_plugin(tasks, message):
    class Bad:
        @hookimpl
        def register_services(self, register):
            register("bad", tasks)

    pm = plugins.plugin_manager()
    pm.register(Bad(), name="bad-plugin")
    pm.register(FakePlugin(), name="good-plugin")
    try:
        catalog = plugins.build_catalog(pm)
        assert "bad" not in catalog.services and "fake" in catalog.services
        assert message in catalog.failed[0]["error"]
    finally:
        pm.unregister(name="bad-plugin")
        pm.unregister(name="good-plugin")


def unbounded_args(entry) -> list[str]:
    """The task's arguments that a value of any size or magnitude would pass (the syscall table's rule)."""
    out = []
    for a in entry.schema.args.values():
        types = set(a.types)
        if (types & {"int", "float"} and (a.min is None or a.max is None)
                or types & {"str", "bytes"} and a.max_len is None and a.choices is None
                or types & {"list", "map"} and a.max_items is None):
            out.append(a.name)
    return out


def test_every_builtin_task_bounds_each_of_its_arguments():
    catalog = plugins.load({"LLMOS_PLUGINS": ""})
    assert not catalog.failed and BUILTINS <= set(catalog.services), catalog.failed
    loose = {f"{s.name}.{t.name}": unbounded_args(t) for s in catalog.services.values() for t in s.tasks.values()}
    assert not {task: args for task, args in loose.items() if args}


def test_a_builtin_with_an_unbounded_argument_is_refused_and_a_third_party_one_is_not():
    class Loose:
        def __init__(self, service):
            self.service = service

        @hookimpl
        def register_services(self, register):
            register(self.service, {"t": Task(lambda ctx, n: {"n": n}, args={"n": {"type": "int", "min": 0}})})

    pm = plugins.plugin_manager()
    pm.register(Loose("loose-builtin"), name=plugins.BUILTIN_PREFIX + "loose")
    pm.register(Loose("loose-plugin"), name="loose-plugin")
    try:
        catalog = plugins.build_catalog(pm)
        assert "loose-builtin" not in catalog.services and "loose-plugin" in catalog.services
        assert "argument 'n': a number needs both min and max" in catalog.failed[0]["error"]
    finally:
        pm.unregister(name=plugins.BUILTIN_PREFIX + "loose")
        pm.unregister(name="loose-plugin")


def test_the_environment_allowlist_and_denylist_choose_the_plugins(tmp_path):
    saved = list(sys.path)
    try:
        env = {"LLMOS_SERVICES_PATH": str(DATA / "plugins"), "LLMOS_PLUGIN_MODULES": "misbehave",
               "LLMOS_PLUGINS": "", "LLMOS_PLUGINS_DENY": "kb,support,misbehave-nothing"}
        catalog = plugins.load(env)
        assert {"misbehave", "summarize", "redact"} <= set(catalog.services)
        assert "kb" not in catalog.services and "support" not in catalog.services
        catalog = plugins.load(dict(env, LLMOS_PLUGINS_DENY="misbehave"))
        assert "misbehave" not in catalog.services
    finally:
        sys.path[:] = saved
        sys.modules.pop("misbehave", None)


# -- svc_list and svc_call against a real kernel -------------------------------------------------

def test_svc_list_shows_builtins_plugins_their_schemas_and_import_failures(client):
    listing = client.svc_list()
    names = {s["name"] for s in listing["services"]}
    assert BUILTINS | {"misbehave"} <= names
    misbehave = next(s for s in listing["services"] if s["name"] == "misbehave")
    add = next(t for t in misbehave["tasks"] if t["name"] == "add")
    assert add["args"]["a"] == {"type": "int", "required": True, "doc": ""}
    assert add["args"]["mode"]["choices"] == ["plain", "fancy"] and add["description"]
    broken = [f for f in listing["failed"] if f["plugin"] == "broken_plugin"]
    assert broken and "llmos_this_module_does_not_exist" in broken[0]["error"]
    assert listing["host"]["state"] == "up" and listing["host"]["os_pid"] > 0


def test_svc_call_runs_a_plain_task_with_the_callers_identity(client):
    assert client.svc_call("misbehave", "add", {"a": 2, "b": 40}) == {"sum": 42, "caller": client.info["name"]}


def test_args_that_break_the_schema_are_einval_naming_the_argument(client):
    for args, name in (({}, "'a'"), ({"a": "two"}, "'a'"), ({"a": 1, "mode": "odd"}, "'mode'"),
                       ({"a": 1, "c": 2}, "unknown argument")):
        with pytest.raises(LLMOSError) as info:
            client.svc_call("misbehave", "add", args)
        assert info.value.errno == "EINVAL" and name in info.value.message


def test_an_unknown_service_or_task_is_enoent(client):
    assert errno_of(client.svc_call, "no-such-service", "x") == "ENOENT"
    assert errno_of(client.svc_call, "misbehave", "no-such-task") == "ENOENT"


def test_a_task_that_raises_gives_eio_with_the_plugins_message(client):
    with pytest.raises(LLMOSError) as info:
        client.svc_call("misbehave", "boom", {"message": "the flux capacitor melted"})
    assert info.value.errno == "EIO" and "the flux capacitor melted" in info.value.message
    assert client.svc_call("misbehave", "add", {"a": 1})["sum"] == 1


def test_a_task_can_answer_with_its_own_errno(client):
    with pytest.raises(LLMOSError) as info:
        client.svc_call("misbehave", "refuse", {"why": "not on a Sunday"})
    assert info.value.errno == "EINVAL" and info.value.message == "not on a Sunday"


@pytest.mark.parametrize("task", ["hang", "hang_sync"])
def test_a_task_that_hangs_hits_the_deadline(client, task):
    assert errno_of(client.svc_call, "misbehave", task, deadline=0.5) == "ETIMEDOUT"
    assert client.svc_call("misbehave", "add", {"a": 5})["sum"] == 5


def test_streaming_sends_deltas_then_the_result_whose_text_is_their_concatenation(client):
    stream = client.svc_stream("misbehave", "count", {"n": 4})
    deltas = list(stream)
    assert deltas == ["0 ", "1 ", "2 ", "3 "]
    assert stream.result == {"n": 4, "text": "0 1 2 3 "}


def test_cancelling_a_call_ends_its_task_in_the_host(client, tmp_path):
    marker = tmp_path / "hang-ended"
    stream = client.svc_stream("misbehave", "hang", {"marker": str(marker)})
    assert next(iter(stream)) == "waiting"           # the task is running in the host
    stream.cancel()
    assert errno_of(list, stream) == "ECANCELED"
    assert wait_until(marker.exists, timeout=10)


def test_tasks_reach_the_kernel_through_syscalls_in_the_callers_namespace(client):
    r = client.svc_call("misbehave", "remember", {"key": "k", "value": "v"})
    assert r == {"region": "svc/misbehave/notes", "value": "v"}
    assert client.memread("svc/misbehave/notes", "k")["value"] == "v"     # the caller's region, not the host's
    client.memdel("svc/misbehave/notes")


def test_generation_a_task_asks_for_counts_against_the_caller_not_the_host(client):
    def tokens_of(name):
        return next(p["tokens"] for p in client.ps() if p["name"] == name)
    host_before, mine_before = tokens_of("llmos-services"), tokens_of(client.info["name"])
    usage = client.svc_call("misbehave", "generate", {"tokens": 5})["usage"]
    assert usage["completion_tokens"] >= 1
    assert tokens_of(client.info["name"]) - mine_before == usage["completion_tokens"]
    assert tokens_of("llmos-services") == host_before


def test_only_the_service_host_may_infer_for_a_call(client):
    """(A made-up service token at hello is refused: tests/security/test_services_trust.py.)"""
    assert errno_of(client.infer, prompt="x", max_tokens=2, for_call=1) == "EPERM"


def test_svc_reload_needs_admin(client):
    assert errno_of(client.svc_reload) == "EPERM"


# -- the host crashing, being killed, reloading: on a kernel of the test's own -------------------

@pytest.fixture
def own_kernel(fresh_kernel, tiny_bert):
    def boot(**env):
        k = fresh_kernel(env=plugin_env(tiny_bert, **env))
        return k
    return boot


def test_a_plugin_that_kills_its_host_fails_only_the_calls_in_flight(own_kernel):
    k = own_kernel()
    with k.client("crasher") as c, k.client("bystander") as other:
        host_up(c)
        pid = c.svc_list()["host"]["os_pid"]
        with pytest.raises(LLMOSError) as info:
            c.svc_call("misbehave", "crash")
        assert info.value.errno == "EIO" and "service host" in info.value.message
        assert other.infer(prompt="still here", max_tokens=3)["usage"]["completion_tokens"] >= 1
        listing = host_up(c)
        assert listing["host"]["os_pid"] != pid and listing["host"]["restarts"] == 1
        assert c.svc_call("misbehave", "add", {"a": 1, "b": 1})["sum"] == 2


def test_killing_the_service_host_mid_call_gives_eio_and_it_comes_back(own_kernel):
    k = own_kernel()
    with k.client("victim-caller") as c, k.client("bystander") as other:
        pid = host_up(c)["host"]["os_pid"]
        outcome = {}

        def call():
            try:
                outcome["result"] = c.svc_call("misbehave", "slow", {"seconds": 30})
            except LLMOSError as exc:
                outcome["errno"] = exc.errno

        caller = threading.Thread(target=call)
        caller.start()
        assert wait_until(lambda: in_flight(other) == 1, timeout=10)
        os.kill(pid, signal.SIGKILL)
        caller.join(30)
        assert outcome == {"errno": "EIO"}
        assert other.ping()["pong"]
        assert host_up(other)["host"]["os_pid"] != pid
        assert c.svc_call("misbehave", "slow", {"seconds": 0})["slept"] == 0


def test_svc_reload_waits_for_calls_in_flight_and_restarts_the_host(own_kernel):
    k = own_kernel()
    with k.client("caller") as c, k.client("operator", caps=["admin", "svc"]) as admin:
        pid = host_up(c)["host"]["os_pid"]
        stream = c.svc_stream("misbehave", "slow", {"seconds": 3.0})
        assert wait_until(lambda: in_flight(admin) == 1, timeout=10)     # reloading while it runs
        reloaded = admin.svc_reload(drain=30)
        assert list(stream) == [] and stream.result == {"slept": 3.0}
        assert reloaded["os_pid"] != pid and reloaded["services"] >= len(BUILTINS) + 1
        assert c.svc_call("misbehave", "add", {"a": 3})["sum"] == 3


def test_a_pip_installed_plugin_appears_after_reload_and_answers(own_kernel, tmp_path):
    site = tmp_path / "site"
    k = own_kernel(LLMOS_SERVICES_PATH=f"{DATA / 'plugins'}{os.pathsep}{site}", LLMOS_PLUGINS="echo")
    with k.client("echo-user") as c, k.client("operator", caps=["admin", "svc"]) as admin:
        assert "echo" not in {s["name"] for s in host_up(c)["services"]}
        source = tmp_path / "llmos-plugin-echo"
        shutil.copytree(EXAMPLE_PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-cache-dir", "--target", str(site), str(source)], check=True, capture_output=True, timeout=300,
                       env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
        admin.svc_reload()
        echo = next(s for s in c.svc_list()["services"] if s["name"] == "echo")
        assert echo["plugin"] == "echo" and {t["name"] for t in echo["tasks"]} == {"say", "stats", "shout"}
        assert c.svc_call("echo", "say", {"text": "hi", "times": 2}) == {"text": "hi hi", "caller": "echo-user"}
        stream = c.svc_stream("echo", "shout", {"text": "good morning", "reply": True})
        assert "".join(stream) == "GOOD MORNING" == stream.result["text"]
        assert isinstance(stream.result["model_reply"], str)
        assert errno_of(c.svc_call, "echo", "stats", {"text": "  "}) == "EINVAL"
